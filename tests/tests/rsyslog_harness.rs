//! The rsyslog test receiver itself: it must receive what a plain client sends over UDP and
//! octet-counted TCP before the sink tests can trust it.
use sensor_tests::{
    agent::TempDir,
    rsyslog::{Rsyslog, TestPki},
};
use std::io::Write;
#[test]
fn the_test_rsyslog_receives_udp_and_octet_counted_tcp() {
    let dir = TempDir::new("rsyslog");
    let pki = TestPki::create(dir.path()).expect("pki");
    let r = Rsyslog::start(dir.path(), &pki).expect("start");
    let msg = "<134>1 2026-11-26T21:00:00.000001Z host app - - [x@1 a=\"b\\\"c\"] hello|world";
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(msg.as_bytes(), ("127.0.0.1", r.udp_port))
        .unwrap();
    let mut t = std::net::TcpStream::connect(("127.0.0.1", r.tcp_port)).unwrap();
    write!(t, "{} {}", msg.len(), msg).unwrap();
    t.flush().unwrap();
    drop(t);
    let got = r.wait_for(2, std::time::Duration::from_secs(5));
    println!("{got:#?}");
    assert_eq!(got.len(), 2);
}
