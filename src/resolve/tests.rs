//! Unit and property tests of the answer logic, against a fixed view.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;
use crate::health::{Addresses, Catalog, NodeInfo};
use crate::prepared::{PreparedQueries, decode_list};

/// A view held in plain maps.
#[derive(Default)]
struct FixedView {
    local: String,
    datacenters: Vec<String>,
    services: HashMap<(String, String), Arc<ServiceHealth>>,
    catalogs: HashMap<String, Arc<Catalog>>,
    /// Datacenters whose data is stale, unknown, or whose Consul does
    /// not answer.
    stale: HashSet<String>,
    unknown: HashSet<String>,
    unreachable: HashSet<String>,
}

impl HealthLookup for FixedView {
    fn local_datacenter(&self) -> Arc<String> {
        Arc::new(self.local.clone())
    }
    fn datacenters(&self) -> Arc<Vec<String>> {
        Arc::new(self.datacenters.clone())
    }
    fn service(&self, datacenter: &str, service: &str) -> Data<Arc<ServiceHealth>> {
        self.services
            .get(&(datacenter.to_owned(), service.to_owned()))
            .cloned()
            .map_or(Data::Pending, Data::Ready)
    }
    fn catalog(&self, datacenter: &str) -> Data<Arc<Catalog>> {
        self.catalogs
            .get(datacenter)
            .cloned()
            .map_or(Data::Pending, Data::Ready)
    }
    fn freshness(&self, datacenter: &str, _service: &str) -> Freshness {
        if self.unknown.contains(datacenter) {
            Freshness::Unknown
        } else if self.stale.contains(datacenter) {
            Freshness::Stale
        } else {
            Freshness::Fresh
        }
    }
    fn reachable(&self, datacenter: &str) -> bool {
        !self.unreachable.contains(datacenter)
    }
    fn node(&self, datacenter: &str, node: &str) -> Option<Arc<NodeInfo>> {
        self.services
            .iter()
            .filter(|((dc, _), _)| dc == datacenter)
            .flat_map(|(_, health)| &health.instances)
            .find(|i| i.node.name.eq_ignore_ascii_case(node))
            .map(|i| Arc::clone(&i.node))
    }
}

impl FixedView {
    fn new(dcs: &[&str]) -> Self {
        Self {
            local: dcs[0].to_owned(),
            datacenters: dcs.iter().map(|d| (*d).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// Sets a service's instances in a DC and lists it in that DC's catalog.
    fn set(&mut self, dc: &str, service: &str, instances: Vec<Instance>) {
        self.services.insert(
            (dc.to_owned(), service.to_owned()),
            Arc::new(ServiceHealth {
                index: 1,
                instances,
            }),
        );
        let mut catalog = self
            .catalogs
            .get(dc)
            .map(|c| Catalog::clone(c))
            .unwrap_or_default();
        catalog.insert(service.to_owned());
        self.catalogs.insert(dc.to_owned(), Arc::new(catalog));
    }

    fn empty_catalog(&mut self, dc: &str) {
        self.catalogs.entry(dc.to_owned()).or_default();
    }
}

fn instance(node: &str, address: &str, status: CheckStatus) -> Instance {
    crate::health::test_instance(node, address, status)
}

fn resolver(toml: &str) -> Resolver {
    Resolver::new(&Config::from_toml_str(toml, "test.toml").unwrap())
}

fn ask(r: &Resolver, view: &FixedView, name: &str, qtype: RecordType) -> Outcome {
    let question = Question {
        name: Name::from_ascii(name).unwrap(),
        qtype,
        qclass: DNSClass::IN,
    };
    let mut rng = fastrand::Rng::with_seed(7);
    r.resolve(
        &question,
        view,
        &mut Context {
            serial: 1234,
            rng: &mut rng,
            now: Duration::ZERO,
            trace: None,
        },
    )
}

fn answer(r: &Resolver, view: &FixedView, name: &str, qtype: RecordType) -> Answer {
    match ask(r, view, name, qtype) {
        Outcome::Answer(a) => a,
        other => panic!("{name} {qtype}: not an answer: {other:?}"),
    }
}

fn a_records(answer: &Answer) -> Vec<String> {
    let mut out: Vec<String> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn is_soa_only_authority(answer: &Answer) -> bool {
    answer.authorities.len() == 1
        && matches!(answer.authorities[0].data, RData::SOA(_))
        && answer.authorities[0].name == Name::from_ascii("consul.").unwrap()
}

const FAILOVER: &str = "[[query]]\nname = \"grafana\"\nfailover = { datacenters = [\"dc2\"] }\n";

fn two_dcs() -> FixedView {
    let mut view = FixedView::new(&["dc1", "dc2"]);
    view.set(
        "dc1",
        "grafana",
        vec![
            instance("a1", "10.1.0.1", CheckStatus::Passing),
            instance("a2", "10.1.0.2", CheckStatus::Passing),
        ],
    );
    view.set(
        "dc2",
        "grafana",
        vec![instance("b1", "10.2.0.1", CheckStatus::Passing)],
    );
    view
}

#[test]
fn query_answers_local_instances() {
    let r = resolver(FAILOVER);
    let a = answer(&r, &two_dcs(), "grafana.query.consul.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert_eq!(a_records(&a), ["10.1.0.1", "10.1.0.2"]);
    assert_eq!(a.datacenter.as_deref(), Some("dc1"));
    assert!(!a.remote);
    assert!(a.authorities.is_empty());
}

#[test]
fn query_fails_over_when_every_local_instance_is_critical() {
    let r = resolver(FAILOVER);
    let mut view = two_dcs();
    view.set(
        "dc1",
        "grafana",
        vec![
            instance("a1", "10.1.0.1", CheckStatus::Critical),
            instance("a2", "10.1.0.2", CheckStatus::Critical),
        ],
    );
    let a = answer(&r, &view, "grafana.query.consul.", RecordType::A);
    assert_eq!(a_records(&a), ["10.2.0.1"]);
    assert_eq!(a.datacenter.as_deref(), Some("dc2"));
    assert!(a.remote);
}

#[test]
fn warning_is_usable_unless_only_passing() {
    let mut view = two_dcs();
    view.set(
        "dc1",
        "grafana",
        vec![instance("a1", "10.1.0.1", CheckStatus::Warning)],
    );
    let a = answer(
        &resolver(FAILOVER),
        &view,
        "grafana.query.consul.",
        RecordType::A,
    );
    assert_eq!(a_records(&a), ["10.1.0.1"]);
    let strict = format!("{FAILOVER}only_passing = true\n");
    let a = answer(
        &resolver(&strict),
        &view,
        "grafana.query.consul.",
        RecordType::A,
    );
    assert_eq!(a_records(&a), ["10.2.0.1"]);
}

#[test]
fn min_healthy_fails_over_early_and_falls_back_to_the_best_partial() {
    let two = format!("{FAILOVER}min_healthy = 2\n");
    let mut view = two_dcs();
    view.set(
        "dc1",
        "grafana",
        vec![
            instance("a1", "10.1.0.1", CheckStatus::Passing),
            instance("a2", "10.1.0.2", CheckStatus::Critical),
        ],
    );
    view.set(
        "dc2",
        "grafana",
        vec![
            instance("b1", "10.2.0.1", CheckStatus::Passing),
            instance("b2", "10.2.0.2", CheckStatus::Passing),
        ],
    );
    let a = answer(
        &resolver(&two),
        &view,
        "grafana.query.consul.",
        RecordType::A,
    );
    assert_eq!(a_records(&a), ["10.2.0.1", "10.2.0.2"]);
    // dc2 down to one as well: the first DC with anything usable answers.
    view.set(
        "dc2",
        "grafana",
        vec![instance("b1", "10.2.0.1", CheckStatus::Passing)],
    );
    let a = answer(
        &resolver(&two),
        &view,
        "grafana.query.consul.",
        RecordType::A,
    );
    assert_eq!(a_records(&a), ["10.1.0.1"]);
}

#[test]
fn all_unhealthy_follows_on_all_unhealthy() {
    let mut view = two_dcs();
    view.set(
        "dc1",
        "grafana",
        vec![instance("a1", "10.1.0.1", CheckStatus::Critical)],
    );
    view.set(
        "dc2",
        "grafana",
        vec![instance("b1", "10.2.0.1", CheckStatus::Critical)],
    );
    let a = answer(
        &resolver(FAILOVER),
        &view,
        "grafana.query.consul.",
        RecordType::A,
    );
    assert_eq!(a.rcode, ResponseCode::NXDomain);
    assert!(is_soa_only_authority(&a));
    let servfail = format!("{FAILOVER}on_all_unhealthy = \"servfail\"\n");
    let a = answer(
        &resolver(&servfail),
        &view,
        "grafana.query.consul.",
        RecordType::A,
    );
    assert_eq!(a.rcode, ResponseCode::ServFail);
    let open = format!("{FAILOVER}on_all_unhealthy = \"fail-open\"\n");
    let a = answer(
        &resolver(&open),
        &view,
        "grafana.query.consul.",
        RecordType::A,
    );
    assert_eq!(a_records(&a), ["10.1.0.1"]);
    assert_eq!(a.datacenter.as_deref(), Some("dc1"));
}

#[test]
fn chain_follows_consul_order_and_skips() {
    let dcs: Vec<String> = ["dc1", "dc3", "dc2", "dc4"]
        .iter()
        .map(|d| (*d).to_owned())
        .collect();
    let policy = |nearest_n: usize, listed: &[&str]| Policy {
        failover: crate::config::Failover {
            nearest_n,
            datacenters: listed.iter().map(|d| (*d).to_owned()).collect(),
        },
        ..Policy::default()
    };
    assert_eq!(Resolver::chain(&policy(0, &[]), "dc1", &dcs), ["dc1"]);
    assert_eq!(
        Resolver::chain(&policy(2, &[]), "dc1", &dcs),
        ["dc1", "dc3", "dc2"]
    );
    assert_eq!(
        Resolver::chain(
            &policy(1, &["dc1", "nowhere", "dc3", "dc4", "dc2"]),
            "dc1",
            &dcs
        ),
        ["dc1", "dc3", "dc4", "dc2"]
    );
    assert_eq!(
        Resolver::chain(&policy(0, &["dc1", "dc2"]), "dc2", &dcs),
        ["dc2", "dc1"]
    );
}

#[test]
fn filters_tags_and_meta() {
    let mut view = two_dcs();
    let mut tagged = instance("a1", "10.1.0.1", CheckStatus::Passing);
    tagged.tags = vec!["Primary".into()];
    Arc::make_mut(&mut tagged.node)
        .meta
        .insert("rack".into(), "r1".into());
    let mut canary = instance("a2", "10.1.0.2", CheckStatus::Passing);
    canary.tags = vec!["primary".into(), "canary".into()];
    view.set("dc1", "grafana", vec![tagged, canary]);
    let mut racked = instance("b1", "10.2.0.1", CheckStatus::Passing);
    Arc::make_mut(&mut racked.node)
        .meta
        .insert("rack".into(), "r2".into());
    view.set("dc2", "grafana", vec![racked]);
    let cfg = |extra: &str| resolver(&format!("{FAILOVER}{extra}\n"));
    let a = answer(
        &cfg("tags = [\"primary\", \"!canary\"]"),
        &view,
        "grafana.query.consul.",
        RecordType::A,
    );
    assert_eq!(a_records(&a), ["10.1.0.1"]);
    let a = answer(
        &cfg("node_meta = { rack = \"r2\" }"),
        &view,
        "grafana.query.consul.",
        RecordType::A,
    );
    assert_eq!(
        a_records(&a),
        ["10.2.0.1"],
        "no dc1 node in rack r2: dc2 answers"
    );
    let a = answer(
        &resolver(""),
        &view,
        "primary.grafana.service.consul.",
        RecordType::A,
    );
    assert_eq!(a_records(&a), ["10.1.0.1", "10.1.0.2"]);
    let a = answer(
        &resolver(""),
        &view,
        "canary.grafana.service.consul.",
        RecordType::A,
    );
    assert_eq!(a_records(&a), ["10.1.0.2"]);
    let a = answer(
        &resolver(""),
        &view,
        "nope.grafana.service.consul.",
        RecordType::A,
    );
    assert_eq!(a.rcode, ResponseCode::NXDomain);
}

#[test]
fn ignore_check_ids_skips_checks() {
    let mut view = two_dcs();
    view.set(
        "dc1",
        "grafana",
        vec![instance("a1", "10.1.0.1", CheckStatus::Critical)],
    );
    let r = resolver(&format!("{FAILOVER}ignore_check_ids = [\"service:svc\"]\n"));
    assert_eq!(
        a_records(&answer(&r, &view, "grafana.query.consul.", RecordType::A)),
        ["10.1.0.1"]
    );
}

#[test]
fn service_names_never_fail_over() {
    let mut view = two_dcs();
    view.set(
        "dc1",
        "grafana",
        vec![instance("a1", "10.1.0.1", CheckStatus::Critical)],
    );
    let r = resolver(FAILOVER);
    let a = answer(&r, &view, "grafana.service.consul.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NXDomain);
    let a = answer(&r, &view, "grafana.service.dc2.consul.", RecordType::A);
    assert_eq!(a_records(&a), ["10.2.0.1"]);
    assert!(a.remote);
    let a = answer(&r, &view, "grafana.service.dc9.consul.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NXDomain);
    let a = answer(&r, &view, "grafana.query.dc2.consul.", RecordType::A);
    assert_eq!(a_records(&a), ["10.2.0.1"], "query.<dc> makes dc2 local");
}

#[test]
fn implicit_queries_use_the_defaults_and_the_catalog() {
    let mut view = two_dcs();
    view.set(
        "dc1",
        "loki",
        vec![instance("a1", "10.1.0.9", CheckStatus::Critical)],
    );
    view.set(
        "dc2",
        "loki",
        vec![instance("b1", "10.2.0.9", CheckStatus::Passing)],
    );
    let no_failover = resolver("");
    let a = answer(&no_failover, &view, "loki.query.consul.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NXDomain);
    let failover =
        resolver("[queries.defaults]\nfailover = { datacenters = [\"dc1\", \"dc2\"] }\n");
    assert_eq!(
        a_records(&answer(
            &failover,
            &view,
            "loki.query.consul.",
            RecordType::A
        )),
        ["10.2.0.9"]
    );
    // Unknown everywhere: NXDOMAIN without asking for any watch.
    let a = answer(&failover, &view, "random-name.query.consul.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NXDomain);
    let off = resolver("[queries]\nimplicit = false\n");
    assert_eq!(
        answer(&off, &view, "loki.query.consul.", RecordType::A).rcode,
        ResponseCode::NXDomain
    );
}

#[test]
fn missing_data_asks_for_watches() {
    let mut view = FixedView::new(&["dc1", "dc2"]);
    let r = resolver(FAILOVER);
    match ask(&r, &view, "grafana.query.consul.", RecordType::A) {
        Outcome::Pending(needs) => {
            // The catalog first: a service no catalog lists gets no watch.
            assert!(needs.services.is_empty(), "{needs:?}");
            assert_eq!(needs.catalogs, ["dc1"]);
        }
        other => panic!("expected pending, got {other:?}"),
    }
    match ask(&resolver(""), &view, "loki.query.consul.", RecordType::A) {
        Outcome::Pending(needs) => assert_eq!(needs.catalogs, ["dc1"]),
        other => panic!("expected pending, got {other:?}"),
    }
    // The local DC's catalog lacks grafana: no watch, straight to dc2.
    view.empty_catalog("dc1");
    match ask(&r, &view, "grafana.query.consul.", RecordType::A) {
        Outcome::Pending(needs) => assert_eq!(needs.catalogs, ["dc2"]),
        other => panic!("expected pending, got {other:?}"),
    }
    view.catalogs
        .insert("dc2".into(), Arc::new(["grafana".to_owned()].into()));
    match ask(&r, &view, "grafana.query.consul.", RecordType::A) {
        Outcome::Pending(needs) => {
            assert_eq!(needs.services, [ServiceKey::new("dc2", "grafana")]);
            assert!(needs.catalogs.is_empty());
        }
        other => panic!("expected pending, got {other:?}"),
    }
}

#[test]
fn aaaa_for_an_ipv4_service_is_nodata_with_the_soa() {
    let a = answer(
        &resolver(FAILOVER),
        &two_dcs(),
        "grafana.query.consul.",
        RecordType::AAAA,
    );
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.answers.is_empty());
    assert!(is_soa_only_authority(&a));
    let a = answer(
        &resolver(FAILOVER),
        &two_dcs(),
        "grafana.query.consul.",
        RecordType::TXT,
    );
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(is_soa_only_authority(&a));
}

#[test]
fn any_gives_both_families_and_duplicates_collapse() {
    let mut view = two_dcs();
    let mut dual = instance("a1", "10.1.0.1", CheckStatus::Passing);
    dual.lan = Addresses::from_consul("10.1.0.1", None, Some("fd00::1"));
    let same_ip = instance("a1", "10.1.0.1", CheckStatus::Passing);
    view.set("dc1", "grafana", vec![dual, same_ip]);
    let a = answer(
        &resolver(FAILOVER),
        &view,
        "grafana.query.consul.",
        RecordType::ANY,
    );
    assert_eq!(a_records(&a), ["10.1.0.1", "fd00::1"]);
    let a = answer(
        &resolver(FAILOVER),
        &view,
        "grafana.query.consul.",
        RecordType::AAAA,
    );
    assert_eq!(a_records(&a), ["fd00::1"]);
}

#[test]
fn srv_has_targets_weights_and_glue() {
    let mut view = two_dcs();
    let mut own = instance("a2", "10.1.0.2", CheckStatus::Warning);
    own.service_address = true;
    view.set(
        "dc1",
        "grafana",
        vec![instance("a1", "10.1.0.1", CheckStatus::Passing), own],
    );
    let r = resolver(FAILOVER);
    for name in [
        "grafana.query.consul.",
        "_grafana._tcp.query.consul.",
        "_grafana._tcp.service.consul.",
    ] {
        let a = answer(&r, &view, name, RecordType::SRV);
        let mut srvs: Vec<(u16, u16, u16, String)> = a
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::SRV(s) => (s.priority, s.weight, s.port, s.target.to_ascii()),
                other => panic!("{other:?}"),
            })
            .collect();
        srvs.sort();
        assert_eq!(
            srvs,
            [
                (1, 1, 3000, "0a010002.addr.dc1.consul.".to_owned()),
                (1, 10, 3000, "a1.node.dc1.consul.".to_owned())
            ],
            "{name}"
        );
        let mut glue: Vec<(String, String)> = a
            .additionals
            .iter()
            .map(|r| {
                (
                    r.name.to_ascii(),
                    a_records(&Answer {
                        answers: vec![r.clone()],
                        ..a.clone()
                    })[0]
                        .clone(),
                )
            })
            .collect();
        glue.sort();
        assert_eq!(
            glue,
            [
                (
                    "0a010002.addr.dc1.consul.".to_owned(),
                    "10.1.0.2".to_owned()
                ),
                ("a1.node.dc1.consul.".to_owned(), "10.1.0.1".to_owned())
            ]
        );
    }
}

#[test]
fn hostnames_give_a_cname() {
    let mut view = two_dcs();
    view.set(
        "dc1",
        "grafana",
        vec![instance("a1", "grafana.example.com", CheckStatus::Passing)],
    );
    let a = answer(
        &resolver(FAILOVER),
        &view,
        "grafana.query.consul.",
        RecordType::A,
    );
    assert_eq!(a.answers.len(), 1);
    assert_eq!(
        a.answers[0].data,
        RData::CNAME(CNAME(Name::from_ascii("grafana.example.com.").unwrap()))
    );
}

#[test]
fn wan_addresses_for_remote_answers_when_translating() {
    let mut view = two_dcs();
    view.set(
        "dc1",
        "grafana",
        vec![instance("a1", "10.1.0.1", CheckStatus::Critical)],
    );
    let mut b = instance("b1", "10.2.0.1", CheckStatus::Passing);
    b.wan = Addresses::from_consul("192.0.2.1", None, None);
    b.wan_port = Some(8443);
    view.set("dc2", "grafana", vec![b]);
    let plain = answer(
        &resolver(FAILOVER),
        &view,
        "grafana.query.consul.",
        RecordType::A,
    );
    assert_eq!(a_records(&plain), ["10.2.0.1"]);
    let r = resolver(&format!("[consul]\ntranslate_wan_addrs = true\n{FAILOVER}"));
    assert_eq!(
        a_records(&answer(&r, &view, "grafana.query.consul.", RecordType::A)),
        ["192.0.2.1"]
    );
    let srv = answer(&r, &view, "grafana.query.consul.", RecordType::SRV);
    match &srv.answers[0].data {
        RData::SRV(s) => {
            assert_eq!(s.port, 8443);
            assert_eq!(s.target.to_ascii(), "c0000201.addr.dc2.consul.");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn zone_structure_and_refusals() {
    let r = resolver(FAILOVER);
    let view = two_dcs();
    let soa = answer(&r, &view, "consul.", RecordType::SOA);
    assert!(
        matches!(&soa.answers[..], [rec] if matches!(&rec.data, RData::SOA(s) if s.serial == 1234 && s.refresh == 3600 && s.retry == 600 && s.expire == 86_400 && s.minimum == 0 && s.mname.to_ascii() == "ns.consul." && s.rname.to_ascii() == "hostmaster.consul."))
    );
    let ns = answer(&r, &view, "consul.", RecordType::NS);
    assert!(
        matches!(&ns.answers[..], [rec] if rec.data == RData::NS(NS(Name::from_ascii("ns.consul.").unwrap())))
    );
    for ent in [
        "query.consul.",
        "service.consul.",
        "dc2.consul.",
        "_tcp.query.consul.",
        "consul.",
        "ns.consul.",
    ] {
        let a = answer(&r, &view, ent, RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError, "{ent}");
        assert!(a.answers.is_empty() && is_soa_only_authority(&a), "{ent}");
    }
    for nx in [
        "nothing.consul.",
        "x.y.consul.",
        "nope.query.consul.",
        "grafana.query.dc9.consul.",
        "1.2.addr.consul.",
    ] {
        let a = answer(&r, &view, nx, RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NXDomain, "{nx}");
        assert!(is_soa_only_authority(&a), "{nx}");
    }
    let out = answer(&r, &view, "example.com.", RecordType::A);
    assert_eq!(out.rcode, ResponseCode::Refused);
    assert_eq!(out.kind, Kind::OutOfZone);
    let question = Question {
        name: Name::from_ascii("grafana.query.consul.").unwrap(),
        qtype: RecordType::A,
        qclass: DNSClass::CH,
    };
    let mut rng = fastrand::Rng::new();
    match r.resolve(
        &question,
        &view,
        &mut Context {
            serial: 1,
            rng: &mut rng,
            now: Duration::ZERO,
            trace: None,
        },
    ) {
        Outcome::Answer(a) => assert_eq!(a.rcode, ResponseCode::Refused),
        other => panic!("CH class must be refused, got {other:?}"),
    }
}

#[test]
fn addr_names_decode_hex() {
    let r = resolver("");
    let view = two_dcs();
    assert_eq!(
        a_records(&answer(
            &r,
            &view,
            "0a010002.addr.dc1.consul.",
            RecordType::A
        )),
        ["10.1.0.2"]
    );
    let v6 = answer(
        &r,
        &view,
        "fd000000000000000000000000000001.addr.consul.",
        RecordType::AAAA,
    );
    assert_eq!(a_records(&v6), ["fd00::1"]);
    let nodata = answer(&r, &view, "0a010002.addr.consul.", RecordType::AAAA);
    assert!(nodata.answers.is_empty() && nodata.rcode == ResponseCode::NoError);
}

#[test]
fn owner_names_keep_the_question_case_and_alt_domains_work() {
    let r = resolver(&format!(
        "[dns]\nalt_domains = [\"consul.example.net\"]\n{FAILOVER}"
    ));
    let a = answer(&r, &two_dcs(), "GraFana.Query.CONSUL.", RecordType::A);
    assert_eq!(a.answers[0].name.to_ascii(), "GraFana.Query.CONSUL.");
    let alt = answer(
        &r,
        &two_dcs(),
        "grafana.query.consul.example.net.",
        RecordType::SRV,
    );
    assert!(
        matches!(&alt.answers[0].data, RData::SRV(s) if s.target.to_ascii().ends_with(".dc1.consul.example.net."))
    );
    let nx = answer(&r, &two_dcs(), "nope.consul.example.net.", RecordType::A);
    assert_eq!(nx.authorities[0].name.to_ascii(), "consul.example.net.");
}

#[test]
fn answers_are_shuffled() {
    let mut view = two_dcs();
    let many = (1..=20)
        .map(|i| {
            instance(
                &format!("n{i}"),
                &format!("10.1.0.{i}"),
                CheckStatus::Passing,
            )
        })
        .collect();
    view.set("dc1", "grafana", many);
    let r = resolver(FAILOVER);
    let question = Question {
        name: Name::from_ascii("grafana.query.consul.").unwrap(),
        qtype: RecordType::A,
        qclass: DNSClass::IN,
    };
    let mut rng = fastrand::Rng::with_seed(1);
    let mut orders = HashSet::new();
    for _ in 0..10 {
        if let Outcome::Answer(a) = r.resolve(
            &question,
            &view,
            &mut Context {
                serial: 1,
                rng: &mut rng,
                now: Duration::ZERO,
                trace: None,
            },
        ) {
            assert_eq!(a.answers.len(), 20);
            orders.insert(
                a.answers
                    .iter()
                    .map(|r| format!("{:?}", r.data))
                    .collect::<Vec<_>>(),
            );
        }
    }
    assert!(orders.len() > 1, "ten answers in one order");
}

fn status_strategy() -> impl Strategy<Value = CheckStatus> {
    prop_oneof![
        Just(CheckStatus::Passing),
        Just(CheckStatus::Warning),
        Just(CheckStatus::Critical)
    ]
}

proptest! {
    /// The answer comes from the first DC of the chain with a usable
    /// instance (min_healthy 1), never holds a critical instance, and is
    /// NXDOMAIN exactly when nothing is usable anywhere.
    #[test]
    fn failover_picks_the_first_usable_datacenter(
        dc1 in proptest::collection::vec(status_strategy(), 0..5),
        dc2 in proptest::collection::vec(status_strategy(), 0..5),
        dc3 in proptest::collection::vec(status_strategy(), 0..5),
        only_passing in any::<bool>(),
    ) {
        let mut view = FixedView::new(&["dc1", "dc2", "dc3"]);
        let mut expected = None;
        for (d, statuses) in [(1, &dc1), (2, &dc2), (3, &dc3)] {
            let instances: Vec<Instance> = statuses
                .iter()
                .enumerate()
                .map(|(i, s)| instance(&format!("n{d}-{i}"), &format!("10.{d}.0.{}", i + 1), *s))
                .collect();
            let usable = statuses.iter().any(|s| *s == CheckStatus::Passing || (*s == CheckStatus::Warning && !only_passing));
            if usable && expected.is_none() {
                expected = Some(format!("dc{d}"));
            }
            view.set(&format!("dc{d}"), "grafana", instances);
        }
        let r = resolver(&format!(
            "[[query]]\nname = \"grafana\"\nonly_passing = {only_passing}\nfailover = {{ datacenters = [\"dc2\", \"dc3\"] }}\n"
        ));
        let a = answer(&r, &view, "grafana.query.consul.", RecordType::A);
        prop_assert_eq!(a.datacenter.clone(), expected.clone());
        match expected {
            None => prop_assert_eq!(a.rcode, ResponseCode::NXDomain),
            Some(dc) => {
                let d = &dc[2..];
                let statuses = match d { "1" => &dc1, "2" => &dc2, _ => &dc3 };
                let want: Vec<String> = statuses
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| **s == CheckStatus::Passing || (**s == CheckStatus::Warning && !only_passing))
                    .map(|(i, _)| format!("10.{d}.0.{}", i + 1))
                    .collect();
                let mut want = want;
                want.sort();
                prop_assert_eq!(a_records(&a), want);
            }
        }
    }

    /// Arbitrary names inside the zone never panic and never refuse.
    #[test]
    fn any_name_in_the_zone_gets_an_answer(labels in proptest::collection::vec("[a-z0-9_-]{1,12}", 0..6), qtype in 0u16..300) {
        let name = format!("{}consul.", labels.iter().map(|l| format!("{l}.")).collect::<String>());
        let r = resolver(FAILOVER);
        let view = two_dcs();
        let parsed = Name::from_ascii(&name);
        prop_assume!(parsed.is_ok());
        let question = Question { name: parsed.unwrap(), qtype: RecordType::from(qtype), qclass: DNSClass::IN };
        let mut rng = fastrand::Rng::with_seed(3);
        match r.resolve(&question, &view, &mut Context { serial: 1, rng: &mut rng, now: Duration::ZERO, trace: None }) {
            Outcome::Answer(a) => prop_assert_ne!(a.rcode, ResponseCode::Refused),
            Outcome::Pending(_) | Outcome::Forward(_) => {}
        }
    }
}

#[test]
fn remote_is_relative_to_the_resolvers_own_datacenter() {
    let r = resolver(FAILOVER);
    let a = answer(&r, &two_dcs(), "grafana.query.dc2.consul.", RecordType::A);
    assert_eq!(a.datacenter.as_deref(), Some("dc2"));
    assert!(a.remote, "dc2 is not this resolver's datacenter");
    let mut view = two_dcs();
    view.local = "dc2".to_owned();
    let a = answer(&r, &view, "grafana.query.consul.", RecordType::A);
    assert_eq!(a_records(&a), ["10.2.0.1"]);
    assert!(!a.remote);
}

fn with_prepared(r: &Resolver, json: &str) -> Resolver {
    let settings = Settings::default();
    r.with_prepared(Arc::new(PreparedQueries::new(
        decode_list(json.as_bytes()).unwrap(),
        settings,
    )))
}

fn three_dcs() -> FixedView {
    let mut view = FixedView::new(&["dc1", "dc3", "dc2"]);
    for (dc, ip) in [
        ("dc1", "10.1.0.1"),
        ("dc2", "10.2.0.1"),
        ("dc3", "10.3.0.1"),
    ] {
        view.set(
            dc,
            "loki",
            vec![instance(&format!("{dc}-n1"), ip, CheckStatus::Passing)],
        );
        view.set(
            dc,
            "grafana",
            vec![instance(&format!("{dc}-g1"), ip, CheckStatus::Passing)],
        );
    }
    view
}

#[test]
fn prepared_queries_come_after_config_and_before_implicit() {
    let r = with_prepared(
        &resolver(
            "[queries]\nimplicit = false\n[[query]]\nname = \"grafana\"\nservice = \"loki\"\n",
        ),
        r#"[{"ID":"11111111-2222-3333-4444-555555555555","Name":"grafana","Service":{"Service":"grafana"}},
            {"ID":"21111111-2222-3333-4444-555555555555","Name":"logs","Service":{"Service":"loki",
             "Failover":{"Datacenters":["dc2"]}},"DNS":{"TTL":"30s"}},
            {"ID":"31111111-2222-3333-4444-555555555555","Name":"geo-",
             "Template":{"Type":"name_prefix_match"},
             "Service":{"Service":"${name.suffix}","Failover":{"NearestN":2}}}]"#,
    );
    let mut view = three_dcs();
    // [[query]] grafana (service loki) wins over the prepared query.
    view.set("dc1", "grafana", vec![]);
    let a = answer(&r, &view, "grafana.query.consul.", RecordType::A);
    assert_eq!(a_records(&a), ["10.1.0.1"]);
    // Failover.Datacenters, DNS.TTL; the ID works as a name too.
    view.set(
        "dc1",
        "loki",
        vec![instance("n", "10.1.0.1", CheckStatus::Critical)],
    );
    for name in [
        "logs.query.consul.",
        "21111111-2222-3333-4444-555555555555.query.consul.",
    ] {
        let a = answer(&r, &view, name, RecordType::A);
        assert_eq!(a_records(&a), ["10.2.0.1"], "{name}");
        assert_eq!(a.answers[0].ttl, 30);
    }
    // The template: NearestN 2 picks dc3, the nearest.
    let a = answer(&r, &view, "geo-loki.query.consul.", RecordType::A);
    assert_eq!(a.datacenter.as_deref(), Some("dc3"));
    // A template name whose service no catalog lists: NXDOMAIN, no watch.
    match ask(&r, &view, "geo-nothing.query.consul.", RecordType::A) {
        Outcome::Answer(a) => assert_eq!(a.rcode, ResponseCode::NXDomain),
        other => panic!("expected NXDOMAIN, got {other:?}"),
    }
    // A template rendering no service: NXDOMAIN, as Consul answers.
    let empty = with_prepared(
        &r,
        r#"[{"ID":"41111111-2222-3333-4444-555555555555","Name":"re-",
             "Template":{"Type":"name_prefix_match","Regexp":"^re-([a-z]+)$"},
             "Service":{"Service":"${match(1)}"}}]"#,
    );
    assert_eq!(
        answer(&empty, &three_dcs(), "re-loki.query.consul.", RecordType::A)
            .datacenter
            .as_deref(),
        Some("dc1")
    );
    let a = answer(
        &empty,
        &three_dcs(),
        "re-loki_9.query.consul.",
        RecordType::A,
    );
    assert_eq!(a.rcode, ResponseCode::NXDomain);
    // Implicit is off: no fallback to the service of that name.
    let a = answer(&r, &view, "tempo.query.consul.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NXDomain);
}

#[test]
fn prepared_queries_are_ignored_when_turned_off() {
    let r = with_prepared(
        &resolver("[queries]\nprepared = false\nimplicit = false\n"),
        r#"[{"ID":"1","Name":"logs","Service":{"Service":"loki"}}]"#,
    );
    assert!(!r.serves_prepared());
    let a = answer(&r, &three_dcs(), "logs.query.consul.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NXDomain);
}

#[test]
fn nodes_of_watched_services_answer() {
    let r = resolver("");
    let view = three_dcs();
    let a = answer(&r, &view, "DC2-N1.node.dc2.consul.", RecordType::A);
    assert_eq!(a_records(&a), ["10.2.0.1"]);
    assert_eq!(a.answers[0].name.to_ascii(), "DC2-N1.node.dc2.consul.");
    let a = answer(&r, &view, "dc1-n1.node.consul.", RecordType::ANY);
    assert_eq!(a_records(&a), ["10.1.0.1"]);
    // No record of the type: NODATA with the SOA.
    let a = answer(&r, &view, "dc1-n1.node.consul.", RecordType::AAAA);
    assert_eq!(
        (a.rcode, a.answers.len(), a.authorities.len()),
        (ResponseCode::NoError, 0, 1)
    );
    // A node the view does not know: NXDOMAIN, or relayed with an upstream.
    let a = answer(&r, &view, "dc2-n1.node.consul.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::NXDomain);
    let forwarding = resolver("[dns]\nupstream = \"127.0.0.1:8601\"\n");
    assert!(matches!(
        ask(&forwarding, &view, "elsewhere.node.consul.", RecordType::A),
        Outcome::Forward(Kind::Node)
    ));
    assert!(matches!(
        ask(&forwarding, &view, "web.connect.consul.", RecordType::A),
        Outcome::Forward(Kind::Other)
    ));
}

#[test]
fn srv_node_targets_resolve_as_nodes() {
    let r = resolver(FAILOVER);
    let view = three_dcs();
    let srv = answer(&r, &view, "_loki._tcp.service.dc3.consul.", RecordType::SRV);
    let RData::SRV(record) = &srv.answers[0].data else {
        panic!("not an SRV: {srv:?}");
    };
    let target = record.target.to_ascii();
    assert_eq!(target, "dc3-n1.node.dc3.consul.");
    let a = answer(&r, &view, &target, RecordType::A);
    assert_eq!(a_records(&a), ["10.3.0.1"]);
}

#[test]
fn chain_datacenters_behind_the_answer_are_warmed() {
    let r = resolver(
        "[[query]]\nname = \"loki\"\nfailover = { nearest_n = 0, datacenters = [\"dc2\", \"dc3\"] }\n",
    );
    let mut view = FixedView::new(&["dc1", "dc2", "dc3"]);
    view.set(
        "dc1",
        "loki",
        vec![instance("n", "10.1.0.1", CheckStatus::Passing)],
    );
    view.set("dc3", "other", vec![]);
    view.catalogs
        .insert("dc2".into(), Arc::new(["loki".to_owned()].into()));
    let a = answer(&r, &view, "loki.query.consul.", RecordType::A);
    // dc2 lists loki but has no data yet; dc3 does not list it.
    assert_eq!(a.warm, [ServiceKey::new("dc2", "loki")]);
}

fn ask_at(r: &Resolver, view: &FixedView, name: &str, now: Duration) -> Answer {
    let question = Question {
        name: Name::from_ascii(name).unwrap(),
        qtype: RecordType::A,
        qclass: DNSClass::IN,
    };
    let mut rng = fastrand::Rng::with_seed(7);
    match r.resolve(
        &question,
        view,
        &mut Context {
            serial: 1,
            rng: &mut rng,
            now,
            trace: None,
        },
    ) {
        Outcome::Answer(a) => a,
        other => panic!("{name}: not an answer: {other:?}"),
    }
}

#[test]
fn stale_data_is_used_and_flagged_unknown_data_is_not() {
    let r = resolver(FAILOVER);
    let mut view = two_dcs();
    view.stale.insert("dc1".into());
    let a = answer(&r, &view, "grafana.query.consul.", RecordType::A);
    assert_eq!((a.datacenter.as_deref(), a.stale), (Some("dc1"), true));
    assert_eq!(
        a.extended_error.as_ref().map(|e| e.0),
        Some(EDE_STALE_ANSWER)
    );
    // Passed over on stale data: the failover answer is flagged too, and
    // the text names the datacenter that did not answer.
    let healthy = view.services[&("dc1".to_owned(), "grafana".to_owned())].clone();
    view.set(
        "dc1",
        "grafana",
        vec![instance("n", "10.1.0.1", CheckStatus::Critical)],
    );
    let a = answer(&r, &view, "grafana.query.consul.", RecordType::A);
    assert_eq!((a.datacenter.as_deref(), a.stale), (Some("dc2"), true));
    assert!(
        a.extended_error
            .as_ref()
            .is_some_and(|e| e.1.contains("dc1")),
        "{a:?}"
    );
    view.services
        .insert(("dc1".into(), "grafana".into()), healthy);
    // Unknown (stale too long): no usable instance there, so failover.
    view.unknown.insert("dc1".into());
    let a = answer(&r, &view, "grafana.query.consul.", RecordType::A);
    assert_eq!((a.datacenter.as_deref(), a.stale), (Some("dc2"), false));
    // Unknown everywhere: SERVFAIL with EDE 22, never NXDOMAIN.
    view.unknown.insert("dc2".into());
    let a = answer(&r, &view, "grafana.query.consul.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::ServFail);
    assert_eq!(
        a.extended_error.as_ref().map(|e| e.0),
        Some(EDE_NO_REACHABLE_AUTHORITY)
    );
    // Critical in dc2 (fresh) and unknown in dc1: still not "unhealthy".
    view.unknown.remove("dc2");
    view.set(
        "dc2",
        "grafana",
        vec![instance("n", "10.2.0.1", CheckStatus::Critical)],
    );
    let a = answer(&r, &view, "grafana.query.consul.", RecordType::A);
    assert_eq!(a.rcode, ResponseCode::ServFail);
}

#[test]
fn never_synced_and_unreachable_answers_at_once() {
    let r = resolver(FAILOVER);
    let mut view = FixedView::new(&["dc1", "dc2"]);
    view.unreachable.insert("dc1".into());
    view.unreachable.insert("dc2".into());
    // No waiting: SERVFAIL "Not Ready" for implicit and [[query]] names.
    for name in [
        "grafana.query.consul.",
        "loki.query.consul.",
        "grafana.service.consul.",
    ] {
        let a = answer(&r, &view, name, RecordType::A);
        assert_eq!(a.rcode, ResponseCode::ServFail, "{name}");
        assert_eq!(
            a.extended_error.as_ref().map(|e| e.0),
            Some(EDE_NOT_READY),
            "{name}"
        );
    }
    // dc2 answers: the failover goes on without dc1.
    view.unreachable.remove("dc2");
    view.set(
        "dc2",
        "grafana",
        vec![instance("n", "10.2.0.1", CheckStatus::Passing)],
    );
    let a = answer(&r, &view, "grafana.query.consul.", RecordType::A);
    assert_eq!(a.datacenter.as_deref(), Some("dc2"));
}

#[test]
fn failback_waits_until_the_first_datacenter_stayed_good() {
    let r = resolver(
        "[[query]]\nname = \"grafana\"\nfailback_after = \"10s\"\nfailover = { nearest_n = 0, datacenters = [\"dc2\"] }\n",
    );
    let mut view = two_dcs();
    let s = Duration::from_secs;
    let dc = |a: &Answer| a.datacenter.clone().unwrap_or_default();
    assert_eq!(dc(&ask_at(&r, &view, "grafana.query.consul.", s(0))), "dc1");
    // dc1 fails: failover is at once.
    let healthy = view.services[&("dc1".to_owned(), "grafana".to_owned())].clone();
    view.set(
        "dc1",
        "grafana",
        vec![instance("n", "10.1.0.1", CheckStatus::Critical)],
    );
    assert_eq!(dc(&ask_at(&r, &view, "grafana.query.consul.", s(1))), "dc2");
    // dc1 recovers at 2 s: answers stay on dc2 until 12 s.
    view.services
        .insert(("dc1".into(), "grafana".into()), healthy.clone());
    assert_eq!(dc(&ask_at(&r, &view, "grafana.query.consul.", s(2))), "dc2");
    assert_eq!(
        dc(&ask_at(&r, &view, "grafana.query.consul.", s(11))),
        "dc2"
    );
    assert_eq!(
        dc(&ask_at(&r, &view, "grafana.query.consul.", s(12))),
        "dc1"
    );
    // A flap restarts the hold; dc2 failing ends it at once.
    view.set(
        "dc1",
        "grafana",
        vec![instance("n", "10.1.0.1", CheckStatus::Critical)],
    );
    assert_eq!(
        dc(&ask_at(&r, &view, "grafana.query.consul.", s(13))),
        "dc2"
    );
    view.services
        .insert(("dc1".into(), "grafana".into()), healthy);
    assert_eq!(
        dc(&ask_at(&r, &view, "grafana.query.consul.", s(14))),
        "dc2"
    );
    view.set(
        "dc2",
        "grafana",
        vec![instance("n", "10.2.0.1", CheckStatus::Critical)],
    );
    assert_eq!(
        dc(&ask_at(&r, &view, "grafana.query.consul.", s(15))),
        "dc1"
    );
}
