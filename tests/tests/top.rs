//! `sensor-agent top` against a live sensor: the agent attached in a network namespace pair
//! watches a quiet keepalive session; `top` runs in a private tmux server inside the same
//! namespace (it reads the agent's loopback `/status.json`), and the screen, read with
//! `capture-pane`, must show the session among the conversations and its `long_flow` alarm
//! among the latest alarms. `q` must end `top` with status 0 and leave the agent running
//! (top attaches nothing, so it detaches nothing).

use std::time::Duration;

use sensor_tests::{kernel::require_bpf, showcase::LiveTop};

#[test]
fn kernel_top_shows_the_live_flows_and_an_alarm_and_quits_on_q() {
    require_bpf();
    let mut top = LiveTop::start("top", Duration::from_secs(60), 180, 56)
        .unwrap_or_else(|e| panic!("kernel test cannot run: {e}"));
    let screen = top
        .wait_for_alarm(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{screen}");
    for heading in [
        "Traffic",
        "packets/s",
        "watched flows",
        "Alarms by rule",
        "Sinks",
        "alarms-file",
        "Longest conversations",
        "Quietest conversations",
        "Latest alarms",
    ] {
        assert!(
            screen.contains(heading),
            "{heading:?} is not on screen:\n{screen}"
        );
    }
    assert_eq!(
        top.quit().unwrap_or_else(|e| panic!("{e}")),
        0,
        "top's exit status"
    );
    // The agent goes on: top detached nothing.
    // SAFETY: signal 0 only checks that our child process exists.
    let alive = unsafe { libc::kill(top.agent as i32, 0) } == 0;
    assert!(alive, "the agent stopped when top quit");
}
