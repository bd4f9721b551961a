//! The alarm itself as compact JSON: the ECS document of the alarm contract, unchanged.
//! serde_json writes it on one line and escapes every control character inside strings, so
//! the payload never contains a raw CR, LF or NUL; U+2028/U+2029 and bidi controls are
//! escaped as `\uXXXX` on top (`compact_json`).

use serde_json::Value;

pub(super) fn render(alarm: &Value) -> String {
    // The same JSON value, with line separators and bidi controls escaped too.
    super::compact_json(alarm)
}

#[cfg(test)]
mod tests {
    use super::super::{testkit::*, Format, Renderer};
    use fastrand::Rng;
    use serde_json::Value;

    #[test]
    fn golden_example_alarm() {
        let out = Renderer::new(Format::Json, None).render(&example_alarm());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, GOLDEN_JSON);
    }

    /// serde_json without `preserve_order` writes object keys sorted.
    const GOLDEN_JSON: &str = concat!(
        r#"{"@timestamp":"2021-06-10T15:41:22.384993Z","destination":{"bytes":22418,"ip":"192.168.2.21","packets":229,"port":1234},"#,
        r#""event":{"action":"opened","category":["network","intrusion_detection"],"duration":6805775268000,"end":"2021-06-10T15:41:22.384993Z","id":"f3e9fd46e62da2488ae3f085098922f7","kind":"alert","severity":3,"start":"2021-06-10T13:47:56.609725Z","type":["connection","indicator"]},"#,
        r#""network":{"bytes":37610,"community_id":"1:y2XkHe1REW6ho/NuoGcEnbnKND0=","iana_number":"6","packets":459,"transport":"tcp"},"#,
        r#""observer":{"hostname":"vm","ingress":{"interface":{"name":"eth0"}}},"rule":{"id":"long_flow","name":"Suspect Long Flow"},"#,
        r#""sensor":{"conversation":{"flows":1,"open_flows":1},"evidence":{"duration_s":6806.0,"signature":"mining.subscribe","sni":"pool.example|x=1\\\r\n"},"hits":1},"#,
        r#""source":{"bytes":15192,"ip":"192.168.2.186","packets":230,"port":53798},"#,
        r#""threat":{"framework":"MITRE ATT&CK","technique":{"id":["T1496"],"name":["Resource Hijacking"]}}}"#
    );

    #[test]
    fn hostile_strings_round_trip_on_one_line() {
        let renderer = Renderer::new(Format::Json, None);
        let mut rng = Rng::with_seed(0x150A_2021);
        for case in 0..CASES {
            let alarm = Hostile::generate(&mut rng).alarm();
            let bytes = renderer.render(&alarm);
            assert_no_line_breaks(&bytes, case);
            let back: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(back, alarm, "case {case}");
        }
    }
}
