//! Prepared queries (reference §5): validation, template rendering, the
//! instance filters of `execute`, and the failover candidate list of
//! `queryFailover`. Everything here is pure; running a query against the
//! datacenters lives in [`crate::sim`].

use std::collections::HashSet;

use regex::Regex;

use crate::duration::parse_go_duration;
use crate::model::{CRITICAL, CheckServiceNode, PASSING, PreparedQuery, ServiceQuery};
use crate::store::Store;

/// The only template type Consul knows.
pub const TEMPLATE_TYPE: &str = "name_prefix_match";

/// Whether `s` has the canonical UUID form Consul checks with
/// `isUUID` before trying an ID lookup.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

//------------ Validation -----------------------------------------------------

/// The token text Consul shows in place of a redacted token.
pub const REDACTED_TOKEN: &str = "<hidden>";

/// Checks a definition as `parseQuery` does. The error text is Consul's,
/// without the `Invalid prepared query: ` prefix the caller adds.
pub fn parse_query(query: &PreparedQuery) -> Result<(), String> {
    if query.session.is_empty() && query.template.kind.is_empty() && query.name.is_empty() {
        return Err("Must be bound to a session".into());
    }
    if query.token == REDACTED_TOKEN {
        return Err(format!(
            "Bad Token '{REDACTED_TOKEN}', it looks like a query definition with a redacted token was submitted"
        ));
    }
    let svc = &query.service;
    if svc.service.is_empty() {
        return Err("Must provide a Service name to query".into());
    }
    if svc.failover.nearest_n < 0 {
        return Err(format!(
            "Bad NearestN '{}', must be >= 0",
            svc.failover.nearest_n
        ));
    }
    let has_targets = svc.failover.targets.as_ref().is_some_and(|t| !t.is_empty());
    let has_dcs = svc
        .failover
        .datacenters
        .as_ref()
        .is_some_and(|d| !d.is_empty());
    if has_targets && (svc.failover.nearest_n != 0 || has_dcs) {
        return Err("Targets cannot be populated with NearestN or Datacenters".into());
    }
    if !query.dns.ttl.is_empty() {
        let ttl = parse_go_duration(&query.dns.ttl)
            .map_err(|e| format!("Bad DNS TTL '{}': {e}", query.dns.ttl))?;
        if ttl.0 < 0 {
            return Err(format!("DNS TTL '{}', must be >=0", ttl.0));
        }
    }
    Ok(())
}

/// Checks a definition against the others in the store, in the order of
/// `preparedQuerySetTxn`: the name may not alias another query's name
/// (case-insensitive) or ID, only one catch-all template may exist, a
/// session must exist (the simulator has none), and a template must
/// compile. The error text is Consul's, without the `raft apply failed: `
/// prefix the caller adds.
pub fn check_unique(store: &Store, query: &PreparedQuery) -> Result<(), String> {
    if query.id.is_empty() {
        return Err("Missing Query ID".into());
    }
    let lower = query.name.to_lowercase();
    if !query.name.is_empty()
        && store
            .queries()
            .any(|q| q.id != query.id && q.name.to_lowercase() == lower)
    {
        return Err(format!(
            "name '{}' aliases an existing query name",
            query.name
        ));
    }
    if query.name.is_empty()
        && !query.template.kind.is_empty()
        && store
            .queries()
            .any(|q| q.id != query.id && q.name.is_empty() && !q.template.kind.is_empty())
    {
        return Err("a query template with an empty name already exists".into());
    }
    if !query.name.is_empty() && store.query(&query.name).is_some_and(|q| q.id != query.id) {
        return Err(format!(
            "name '{}' aliases an existing query ID",
            query.name
        ));
    }
    if !query.session.is_empty() {
        return Err(format!("invalid session {:?}", query.session));
    }
    if !query.template.kind.is_empty() {
        compile_template(query).map_err(|e| format!("failed compiling template: {e}"))?;
    }
    Ok(())
}

//------------ Templates ------------------------------------------------------

/// One piece of an interpolated string.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Var(String),
    Match(i64),
}

/// Splits a HIL string into literal text and `${...}` interpolations.
/// `$${` is a literal `${`.
fn parse_hil(s: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            text.push_str(&rest[..pos - 1]);
            text.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        text.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("Bad format '{s}': missing closing brace"))?;
        let expr = after[..end].trim();
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(parse_expr(expr).map_err(|e| format!("Bad format '{s}': {e}"))?);
        rest = &after[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn parse_expr(expr: &str) -> Result<Piece, String> {
    if let Some(arg) = expr
        .strip_prefix("match(")
        .and_then(|a| a.strip_suffix(')'))
    {
        let n = arg
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("match: expected an integer argument, got {arg:?}"))?;
        return Ok(Piece::Match(n));
    }
    match expr {
        "name.full" | "name.prefix" | "name.suffix" | "agent.segment" => {
            Ok(Piece::Var(expr.to_owned()))
        }
        other => Err(format!("unknown variable accessed: {other}")),
    }
}

/// What a template render knows about the name asked for.
struct RenderContext<'a> {
    full: &'a str,
    prefix: &'a str,
    matches: Vec<String>,
}

impl RenderContext<'_> {
    fn eval(&self, s: &str) -> Result<String, String> {
        let mut out = String::new();
        for piece in parse_hil(s)? {
            match piece {
                Piece::Text(t) => out.push_str(&t),
                Piece::Var(v) => out.push_str(match v.as_str() {
                    "name.full" => self.full,
                    "name.prefix" => self.prefix,
                    // strings.TrimPrefix: case-sensitive.
                    "name.suffix" => self.full.strip_prefix(self.prefix).unwrap_or(self.full),
                    _ => "",
                }),
                Piece::Match(i) => {
                    if let Some(m) = usize::try_from(i).ok().and_then(|i| self.matches.get(i)) {
                        out.push_str(m);
                    }
                }
            }
        }
        Ok(out)
    }
}

fn compile_regexp(query: &PreparedQuery) -> Result<Option<Regex>, String> {
    if query.template.regexp.is_empty() {
        return Ok(None);
    }
    Regex::new(&query.template.regexp)
        .map(Some)
        .map_err(|e| format!("Bad Regexp: {e}"))
}

/// Validates a template definition: its type, its regexp, and a test render
/// against its own prefix, as Consul's `Compile` does.
pub fn compile_template(query: &PreparedQuery) -> Result<(), String> {
    if query.template.kind != TEMPLATE_TYPE {
        return Err(format!("Bad Template.Type '{}'", query.template.kind));
    }
    compile_regexp(query)?;
    render(query, &query.name).map(|_| ())
}

/// Renders template `query` for the name asked for: interpolates every
/// string inside `Service` and drops empty tags if `RemoveEmptyTags`.
pub fn render(query: &PreparedQuery, name: &str) -> Result<PreparedQuery, String> {
    let matches = match compile_regexp(query)? {
        Some(re) => re
            .captures(name)
            .map(|caps| {
                caps.iter()
                    .map(|m| m.map_or(String::new(), |m| m.as_str().to_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let ctx = RenderContext {
        full: name,
        prefix: &query.name,
        matches,
    };
    let mut out = query.clone();
    let s = &mut out.service;
    let field = |path: &str, v: &mut String| -> Result<(), String> {
        *v = ctx
            .eval(v)
            .map_err(|e| format!("Bad evaluation for '{v}' in Service{path}: {e}"))?;
        Ok(())
    };
    field(".Service", &mut s.service)?;
    field(".Near", &mut s.near)?;
    field(".Peer", &mut s.peer)?;
    field(".SamenessGroup", &mut s.sameness_group)?;
    for (i, dc) in s.failover.datacenters.iter_mut().flatten().enumerate() {
        field(&format!(".Failover.Datacenters[{i}]"), dc)?;
    }
    for (i, t) in s.failover.targets.iter_mut().flatten().enumerate() {
        field(
            &format!(".Failover.Targets[{i}].Datacenter"),
            &mut t.datacenter,
        )?;
        field(&format!(".Failover.Targets[{i}].Peer"), &mut t.peer)?;
    }
    for (i, id) in s.ignore_check_ids.iter_mut().flatten().enumerate() {
        field(&format!(".IgnoreCheckIDs[{i}]"), id)?;
    }
    for (i, tag) in s.tags.iter_mut().flatten().enumerate() {
        field(&format!(".Tags[{i}]"), tag)?;
    }
    for (k, v) in s.node_meta.iter_mut().flatten() {
        field(&format!(".NodeMeta[{k}]"), v)?;
    }
    for (k, v) in s.service_meta.iter_mut().flatten() {
        field(&format!(".ServiceMeta[{k}]"), v)?;
    }
    if query.template.remove_empty_tags {
        // Consul always assigns a fresh `make([]string, 0, …)`, so even a
        // template without tags renders `"Tags":[]`, never `null`.
        let mut tags = s.tags.take().unwrap_or_default();
        tags.retain(|t| !t.is_empty());
        s.tags = Some(tags);
    }
    Ok(out)
}

/// Finds the query for `id_or_name` (`PreparedQueryResolve`): by ID if it
/// is a UUID, then by exact name, then by the longest template prefix
/// (names compare case-insensitively). Templates come back rendered.
pub fn resolve(store: &Store, id_or_name: &str) -> Result<Option<PreparedQuery>, String> {
    if id_or_name.is_empty() {
        return Err("Missing query ID".into());
    }
    if is_uuid(id_or_name)
        && let Some(q) = store.query(id_or_name)
    {
        if !q.template.kind.is_empty() {
            return Err(
                "prepared query templates can only be resolved up by name, not by ID".into(),
            );
        }
        return Ok(Some(q.clone()));
    }
    let prep = |q: &PreparedQuery| {
        if q.template.kind.is_empty() {
            Ok(Some(q.clone()))
        } else {
            render(q, id_or_name).map(Some)
        }
    };
    let lower = id_or_name.to_lowercase();
    if let Some(q) = store
        .queries()
        .find(|q| !q.name.is_empty() && q.name.to_lowercase() == lower)
    {
        return prep(q);
    }
    let best = store
        .queries()
        .filter(|q| !q.template.kind.is_empty() && lower.starts_with(&q.name.to_lowercase()))
        .max_by_key(|q| q.name.len());
    match best {
        Some(q) => prep(q),
        None => Ok(None),
    }
}

//------------ Execution ------------------------------------------------------

/// Drops instances with a critical check, or (with `only_passing`) any
/// non-passing check, skipping `ignore` check IDs
/// (`CheckServiceNodes.FilterIgnore`).
pub fn filter_health(
    nodes: Vec<CheckServiceNode>,
    only_passing: bool,
    ignore: &[String],
) -> Vec<CheckServiceNode> {
    nodes
        .into_iter()
        .filter(|n| {
            n.checks.iter().all(|c| {
                ignore.contains(&c.check_id)
                    || !(c.status == CRITICAL || (only_passing && c.status != PASSING))
            })
        })
        .collect()
}

/// Whether `tags` (case-insensitive) carries every plain entry of `want`
/// and none of its `!`-prefixed ones (`tagFilter`).
pub fn tags_match(tags: &[String], want: &[String]) -> bool {
    let have: HashSet<String> = tags.iter().map(|t| t.to_lowercase()).collect();
    want.iter().all(|w| {
        let w = w.to_lowercase();
        match w.strip_prefix('!') {
            Some(not) => !have.contains(not),
            None => have.contains(&w),
        }
    })
}

/// Runs a query's filters over the instances of its service in one
/// datacenter, in Consul's order: health, node meta, service meta, tags.
pub fn select_nodes(svc: &ServiceQuery, store: &Store) -> Vec<CheckServiceNode> {
    let nodes = store.check_service_nodes(&svc.service);
    let ignore = svc.ignore_check_ids.clone().unwrap_or_default();
    let mut nodes = filter_health(nodes, svc.only_passing, &ignore);
    if let Some(meta) = svc.node_meta.as_ref().filter(|m| !m.is_empty()) {
        nodes.retain(|n| meta_satisfied(n.node.meta.as_ref(), meta));
    }
    if let Some(meta) = svc.service_meta.as_ref().filter(|m| !m.is_empty()) {
        nodes.retain(|n| meta_satisfied(n.service.meta.as_ref(), meta));
    }
    if let Some(tags) = svc.tags.as_ref().filter(|t| !t.is_empty()) {
        nodes.retain(|n| tags_match(&n.service.tags, tags));
    }
    nodes
}

/// Whether `meta` has every key of `want` with the same value
/// (`SatisfiesMetaFilters`).
pub fn meta_satisfied(
    meta: Option<&crate::model::StringMap>,
    want: &crate::model::StringMap,
) -> bool {
    want.iter()
        .all(|(k, v)| meta.and_then(|m| m.get(k)) == Some(v))
}

/// A failover candidate: a datacenter, or a peer (run in the local DC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A federated datacenter by name.
    Datacenter(String),
    /// A cluster peer; the sim has no peers, so these find nothing.
    Peer(String),
}

/// The candidate list of `queryFailover`: the first `NearestN` of
/// `nearest` (other DCs by RTT), then `Datacenters`/`Targets` in order,
/// skipping DCs not in `nearest` (unknown, or the local one) and DCs
/// already chosen. Peers are always appended.
pub fn failover_targets(svc: &ServiceQuery, nearest: &[String]) -> Vec<Target> {
    let mut targets = Vec::new();
    let mut chosen: HashSet<&str> = HashSet::new();
    let n = usize::try_from(svc.failover.nearest_n).unwrap_or(0);
    for dc in nearest.iter().take(n) {
        targets.push(Target::Datacenter(dc.clone()));
        chosen.insert(dc);
    }
    let listed: Vec<(String, String)> = match &svc.failover.targets {
        Some(t) if !t.is_empty() => t
            .iter()
            .map(|t| (t.datacenter.clone(), t.peer.clone()))
            .collect(),
        _ => svc
            .failover
            .datacenters
            .iter()
            .flatten()
            .map(|dc| (dc.clone(), String::new()))
            .collect(),
    };
    for (dc, peer) in listed {
        if !dc.is_empty() {
            if !nearest.contains(&dc) {
                continue;
            }
            if !chosen.contains(dc.as_str()) {
                targets.push(Target::Datacenter(dc.clone()));
            }
        }
        if !peer.is_empty() {
            targets.push(Target::Peer(peer));
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{QueryFailover, QueryTemplate};

    fn template(name: &str, regexp: &str, service: &str) -> PreparedQuery {
        PreparedQuery {
            name: name.into(),
            template: QueryTemplate {
                kind: TEMPLATE_TYPE.into(),
                regexp: regexp.into(),
                remove_empty_tags: false,
            },
            service: ServiceQuery {
                service: service.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn interpolates_names_and_matches() {
        let q = template(
            "geo-",
            r"^geo-(.*?)-(.*)$",
            "${match(1)}/${match(2)}/${name.suffix}",
        );
        let r = render(&q, "geo-loki-eu").unwrap();
        assert_eq!(r.service.service, "loki/eu/loki-eu");
        let q = template(
            "x",
            "",
            "${name.full}|${name.prefix}|$${name.full}|${match(0)}",
        );
        assert_eq!(
            render(&q, "xyz").unwrap().service.service,
            "xyz|x|${name.full}|"
        );
    }

    #[test]
    fn unknown_variable_fails_compilation() {
        let q = template("x", "", "${name.bogus}");
        let err = compile_template(&q).unwrap_err();
        assert!(
            err.contains("unknown variable accessed: name.bogus"),
            "{err}"
        );
    }

    #[test]
    fn failover_targets_follow_consul_order() {
        let nearest = vec!["dc2".to_owned(), "dc3".to_owned(), "dc4".to_owned()];
        let svc = ServiceQuery {
            failover: QueryFailover {
                nearest_n: 1,
                datacenters: Some(vec!["dc1".into(), "dc9".into(), "dc4".into(), "dc2".into()]),
                targets: None,
            },
            ..Default::default()
        };
        assert_eq!(
            failover_targets(&svc, &nearest),
            vec![
                Target::Datacenter("dc2".into()),
                Target::Datacenter("dc4".into())
            ]
        );
    }
}
