//! `screenshots`: the README's pictures, made by the project's own tooling (`cargo xtask
//! screenshots`): `docs/img/report.png`, Chromium's screenshot of the report of the
//! five-rule replay ([`showcase::five_rule_replay`]), and `docs/img/top.txt`, the screen of
//! `sensor-agent top` on a live sensor in a network namespace pair, read from tmux
//! ([`showcase::LiveTop`]; needs root), also drawn as `docs/img/top.png`. Writes nothing
//! else.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use sensor_tests::{
    agent::{self, TempDir},
    browser,
    showcase::{self, LiveTop},
};

fn main() -> Result<()> {
    let out = showcase::docs_img();
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;

    let mut top =
        LiveTop::start("shot", Duration::from_secs(60), 150, 44).map_err(anyhow::Error::msg)?;
    let screen = top
        .wait_for_alarm(Duration::from_secs(60))
        .map_err(anyhow::Error::msg)?;
    let code = top.quit().map_err(anyhow::Error::msg)?;
    if code != 0 {
        bail!("top exited with status {code}");
    }
    let txt = out.join("top.txt");
    let trimmed: Vec<&str> = screen.lines().map(str::trim_end).collect();
    std::fs::write(&txt, trimmed.join("\n") + "\n")
        .with_context(|| format!("write {}", txt.display()))?;
    println!("{}", txt.display());
    // The live namespaces end before the report is made.
    drop(top);

    // The terminal screen as a picture: the captured text in a page Chromium draws.
    let dir = TempDir::new("screenshots");
    let escaped = trimmed
        .join("\n")
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let term = dir.write(
        "top.html",
        format!(
            "<!DOCTYPE html><meta charset=\"utf-8\"><body style=\"margin:0;background:#1d2430\"><pre style=\"margin:0;padding:8px;color:#e6edf3;font:13px/1.2 'DejaVu Sans Mono',monospace\">{escaped}</pre>"
        )
        .as_bytes(),
    );
    let png = out.join("top.png");
    browser::screenshot(&term, &png, 1250, 740).map_err(anyhow::Error::msg)?;
    println!("{}", png.display());

    let (alarms, flows) = showcase::five_rule_replay(&dir).map_err(anyhow::Error::msg)?;
    let page = dir.path().join("report.html");
    let run = agent::run(&[
        "report".as_ref(),
        "--alarms".as_ref(),
        alarms.as_os_str(),
        "--flows".as_ref(),
        flows.as_os_str(),
        "-o".as_ref(),
        page.as_os_str(),
    ]);
    if !run.success {
        bail!("report failed: {}", run.stderr);
    }
    let png = out.join("report.png");
    browser::screenshot(&page, &png, 1100, 2600).map_err(anyhow::Error::msg)?;
    println!("{}", png.display());

    Ok(())
}
