use super::admission::bound_claims;
use super::*;

#[test]
fn node_names_map_to_instances() {
    assert_eq!(instance_of("marketlane-1@10.77.3.11"), "marketlane-1");
    assert_eq!(instance_of("marketlane-0"), "marketlane-0");
}

#[test]
fn a_peer_claims_at_most_the_budget_and_the_configured_symbols() {
    let mut hb = Heartbeat {
        version: CLUSTER_PROTOCOL_VERSION,
        instance: "intruder".into(),
        incarnation: 1,
        seq: 1,
        address: "10.0.0.9:4697".into(),
        line_budget: 1_000_000,
        draining: false,
        streaming: vec!["AAPL".into(), "EVIL".into(), "AAPL".into(), "CL".into()],
    };
    let symbols = vec!["AAPL".to_string(), "CL".to_string(), "XOM".to_string()];
    assert!(bound_claims(&mut hb, 100, &symbols));
    assert_eq!(hb.line_budget, 100);
    assert_eq!(hb.streaming, vec!["AAPL".to_string(), "CL".to_string()]);
    hb.line_budget = 40;
    assert!(!bound_claims(&mut hb, 100, &symbols));
    assert_eq!(hb.line_budget, 40);
}
