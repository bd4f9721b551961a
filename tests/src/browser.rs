//! Headless Chromium (Debian's `chromium`) for tests and benchmarks of the HTML report: the
//! rendered DOM of a page, a screenshot of it, and the references a page makes to anything
//! outside itself.
//!
//! Every run gets its own profile directory (removed on return), so parallel tests never
//! share a browser state, and a deadline: a browser that hangs is killed (by its pid) and the
//! call fails saying so.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{agent::TempDir, wait::wait_until};

/// The browser binary (Debian package `chromium`, installed by `cargo xtask setup`).
pub const CHROMIUM: &str = "chromium";

/// Longest a single browser run may take.
const DEADLINE: Duration = Duration::from_secs(120);

fn run(args: &[String]) -> Result<(String, Duration), String> {
    let profile = TempDir::new("chromium-profile");
    let started = Instant::now();
    let child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
            // Nothing may be fetched: a page that tried would fail, not wait.
            "--proxy-server=127.0.0.1:9",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot run {CHROMIUM} (Debian package chromium; `cargo xtask setup` installs it): {e}")
        })?;
    let pid = child.id();
    let out = std::thread::scope(|s| {
        let waiter = s.spawn(|| child.wait_with_output());
        let left = DEADLINE.saturating_sub(started.elapsed());
        if wait_until(left, "the browser to exit", || waiter.is_finished()).is_err() {
            // SAFETY: kill on the pid of the child we started and have not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        waiter.join()
    });
    let took = started.elapsed();
    let out = out
        .map_err(|_| "the browser waiter panicked".to_string())?
        .map_err(|e| format!("{CHROMIUM}: {e}"))?;
    if took > DEADLINE {
        return Err(format!("{CHROMIUM} did not finish within {DEADLINE:?}"));
    }
    if !out.status.success() {
        return Err(format!(
            "{CHROMIUM} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), took))
}

/// The DOM after Chromium loaded and rendered `page`, and how long that took.
pub fn dump_dom(page: &Path) -> Result<(String, Duration), String> {
    run(&[
        "--dump-dom".to_string(),
        format!("file://{}", page.display()),
    ])
}

/// A PNG screenshot of `page` at `width` x `height` CSS pixels; how long it took.
pub fn screenshot(page: &Path, png: &Path, width: u32, height: u32) -> Result<Duration, String> {
    let (_, took) = run(&[
        format!("--screenshot={}", png.display()),
        format!("--window-size={width},{height}"),
        format!("file://{}", page.display()),
    ])?;
    let size = std::fs::metadata(png).map(|m| m.len()).unwrap_or(0);
    if size == 0 {
        return Err(format!(
            "{CHROMIUM} wrote no screenshot to {}",
            png.display()
        ));
    }
    Ok(took)
}

/// `url(...)` and `@import` in style text that reach outside the document.
fn style_references(css: &str, found: &mut Vec<String>) {
    let lower = css.to_ascii_lowercase();
    if lower.contains("@import") {
        found.push("@import".to_string());
    }
    let mut from = 0;
    while let Some(i) = lower[from..].find("url(") {
        let at = from + i + 4;
        from = at;
        let value: String = css[at..].chars().take_while(|c| *c != ')').collect();
        if !is_local(&value) {
            found.push(format!("url({value})"));
        }
    }
}

fn is_local(v: &str) -> bool {
    let v = v.trim().trim_matches(|c| c == '"' || c == '\'').trim();
    v.starts_with('#') || v.starts_with("data:")
}

/// Elements that load something by their nature.
const LOADING: &[&str] = &[
    "script", "link", "iframe", "frame", "object", "embed", "img", "image", "video", "audio",
    "source", "base", "use",
];
/// Attributes whose value is a URL.
const URL_ATTRS: &[&str] = &[
    "src",
    "href",
    "xlink:href",
    "action",
    "formaction",
    "srcset",
    "poster",
    "data",
    "background",
    "ping",
];

/// One start tag: its name (lower case), its attributes (names lower case) and the offset
/// just past its `>`.
struct Tag {
    name: String,
    attrs: Vec<(String, String)>,
    end: usize,
}

/// The start tag `<name attr="v" ...>` at `html[at]` (a `<`). Quoted values may hold `>`.
fn tag(html: &str, at: usize) -> Option<Tag> {
    let bytes = html.as_bytes();
    let mut i = at + 1;
    let start = i;
    while i < bytes.len()
        && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'-' || bytes[i] == b':')
    {
        i += 1;
    }
    if i == start {
        return None;
    }
    let name = html[start..i].to_ascii_lowercase();
    let mut attrs = Vec::new();
    loop {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] == b'>' {
            let end = (i + 1).min(bytes.len());
            return Some(Tag { name, attrs, end });
        }
        let k0 = i;
        while i < bytes.len()
            && !bytes[i].is_ascii_whitespace()
            && !matches!(bytes[i], b'=' | b'>' | b'/')
        {
            i += 1;
        }
        let key = html[k0..i].to_ascii_lowercase();
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            match bytes.get(i) {
                Some(&q) if q == b'"' || q == b'\'' => {
                    let v0 = i + 1;
                    let end = html[v0..].find(q as char).map_or(html.len(), |e| v0 + e);
                    value = html[v0..end].to_string();
                    i = (end + 1).min(html.len());
                }
                _ => {
                    let v0 = i;
                    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                        i += 1;
                    }
                    value = html[v0..i].to_string();
                }
            }
        }
        attrs.push((key, value));
    }
}

/// Every reference in `html` (a serialized DOM, where text never holds a raw `<`) to
/// something outside the document: an element that loads by nature (`script`, `link`, `img`,
/// `iframe`, ...), a URL attribute (`src`, `href`, `xlink:href`, `action`, ...) that is not a
/// `#` anchor or a `data:` URL, and `url(...)` or `@import` in a `style` element or attribute
/// that is not local. Text that merely mentions such things (an escaped alarm field) is not a
/// reference.
pub fn external_references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = html[at..].find('<') {
        let pos = at + i;
        let Some(Tag { name, attrs, end }) = tag(html, pos) else {
            at = pos + 1;
            continue;
        };
        if LOADING.contains(&name.as_str()) {
            found.push(format!("<{name}>"));
        }
        for (k, v) in &attrs {
            if URL_ATTRS.contains(&k.as_str()) && !is_local(v) {
                found.push(format!("{k}={v}"));
            }
            if k == "style" {
                style_references(v, &mut found);
            }
        }
        at = end;
        if name == "style" {
            let close = html[at..].find("</style").map_or(html.len(), |e| at + e);
            style_references(&html[at..close], &mut found);
            at = close;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_and_data_urls_are_local_everything_else_is_not() {
        let page = r##"<a href="#alarm-1">x</a><svg xmlns="http://www.w3.org/2000/svg"><rect style="fill:url(#g)"/></svg><p title="a>b" data-x="1">"##;
        assert_eq!(external_references(page), Vec::<String>::new());
        let page = r#"<a href="https://example.com/">x</a><div style="background:url(http://x/y.png)"></div><style>@import "a.css";</style><img src="data:image/png;base64,AA">"#;
        let found = external_references(page);
        assert_eq!(found.len(), 4, "{found:?}");
        // Escaped text that mentions a tag or an attribute is not one.
        assert!(
            external_references("<p>see &lt;img src=http://x&gt; url(http://y)</p>").is_empty()
        );
    }
}
