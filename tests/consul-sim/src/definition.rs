//! The body of `PUT /v1/agent/service/register`: Consul's
//! `structs.ServiceDefinition` with its `structs.CheckType` checks, decoded
//! the way Go's `encoding/json` decodes them there, and validated in the
//! order `AgentRegisterService` and `Agent.AddService` validate them
//! (`agent/agent_endpoint.go`, `agent/structs/service_definition.go`,
//! `agent/structs/check_type.go`, `agent/agent.go`).
//!
//! Decoding follows `lib.DecodeJSON`: keys match field names
//! case-insensitively (an exact match first); unknown keys fail with
//! `json: unknown field "X"`; a value of the wrong JSON type fails with
//! Go's `json: cannot unmarshal …` text; both are recorded and decoding
//! goes on, the first one recorded being the error. A check is decoded by
//! `CheckType.UnmarshalJSON`, whose error (including a bad duration) ends
//! the whole decode at once, as Go's does. Only the first JSON value of the
//! body is read; what follows it is ignored, as `json.Decoder` does.
//!
//! Approximations: syntax errors carry serde_json's wording (an empty body
//! is Go's `EOF`, a truncated one `unexpected EOF`); the struct and field
//! path in a type error follow Go 1.21+'s format as best understood; a
//! non-object where a check belongs reports type `structs.CheckType`
//! where Go prints the full anonymous helper struct. `Proxy`, `Connect`
//! and `Locality` are accepted with any content and ignored, as are
//! `Token` and the check fields the simulator does not act on.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::duration::parse_go_duration;
use crate::model::{CRITICAL, PASSING, StringMap, WARNING};

/// Why a registration was refused: the HTTP status and Consul's text.
pub(crate) type Refusal = (u16, String);

/// `structs.CheckType`: one check of a service definition. Durations are
/// Go nanoseconds; `None` marks Go's nil maps and slices (which count for
/// [`is_empty`](Self::is_empty)).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CheckType {
    pub(crate) check_id: String,
    pub(crate) name: String,
    pub(crate) status: String,
    pub(crate) notes: String,
    pub(crate) script_args: Option<Vec<String>>,
    pub(crate) http: String,
    pub(crate) h2ping: String,
    pub(crate) h2ping_use_tls: bool,
    pub(crate) header: Option<BTreeMap<String, Vec<String>>>,
    pub(crate) method: String,
    pub(crate) body: String,
    pub(crate) disable_redirects: bool,
    pub(crate) tcp: String,
    pub(crate) tcp_use_tls: bool,
    pub(crate) udp: String,
    pub(crate) interval: i64,
    pub(crate) alias_node: String,
    pub(crate) alias_service: String,
    pub(crate) docker_container_id: String,
    pub(crate) shell: String,
    pub(crate) grpc: String,
    pub(crate) grpc_use_tls: bool,
    pub(crate) os_service: String,
    pub(crate) tls_server_name: String,
    pub(crate) tls_skip_verify: bool,
    pub(crate) timeout: i64,
    pub(crate) ttl: i64,
    pub(crate) success_before_passing: i64,
    pub(crate) failures_before_warning: i64,
    pub(crate) failures_before_critical: i64,
    pub(crate) proxy_http: String,
    pub(crate) proxy_grpc: String,
    pub(crate) deregister_critical_service_after: i64,
    pub(crate) output_max_size: i64,
}

impl CheckType {
    /// `Empty`: every field at its zero value (an empty map or slice is not
    /// zero, as in `reflect.DeepEqual`).
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn is_script(&self) -> bool {
        self.script_args.as_ref().is_some_and(|a| !a.is_empty())
    }

    fn is_alias(&self) -> bool {
        !self.alias_node.is_empty() || !self.alias_service.is_empty()
    }

    /// Whether the agent runs this check as an HTTP check (`IsHTTP`).
    pub(crate) fn is_http(&self) -> bool {
        !self.http.is_empty() && self.interval > 0
    }

    /// Whether the agent runs this check as a TCP check (`IsTCP`).
    pub(crate) fn is_tcp(&self) -> bool {
        !self.tcp.is_empty() && self.interval > 0
    }

    /// Whether this is a TTL check (`IsTTL`).
    pub(crate) fn is_ttl(&self) -> bool {
        self.ttl > 0
    }

    /// `Validate`, with its texts and order.
    fn validate(&self) -> Result<(), &'static str> {
        let interval_check = self.is_script()
            || !self.http.is_empty()
            || !self.tcp.is_empty()
            || !self.udp.is_empty()
            || !self.grpc.is_empty()
            || !self.h2ping.is_empty()
            || !self.os_service.is_empty();
        if self.interval > 0 && self.ttl > 0 {
            return Err("Interval and TTL cannot both be specified");
        }
        if interval_check && self.interval <= 0 {
            return Err(
                "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks",
            );
        }
        if interval_check && self.is_alias() {
            return Err("Interval cannot be set for Alias checks");
        }
        if self.is_alias() && self.ttl > 0 {
            return Err("TTL must be not be set for Alias checks");
        }
        if !interval_check && !self.is_alias() && self.ttl <= 0 {
            return Err("TTL must be > 0 for TTL checks");
        }
        if self.output_max_size < 0 {
            return Err("MaxOutputMaxSize must be positive");
        }
        if self.failures_before_warning > self.failures_before_critical {
            return Err("FailuresBeforeWarning can't be higher than FailuresBeforeCritical");
        }
        Ok(())
    }

    /// `Type`: the check's kind as the catalog shows it.
    pub(crate) fn kind(&self) -> &'static str {
        let every = self.interval > 0;
        if !self.grpc.is_empty() && every {
            "grpc"
        } else if self.is_http() {
            "http"
        } else if self.is_ttl() {
            "ttl"
        } else if self.is_tcp() {
            "tcp"
        } else if !self.udp.is_empty() && every {
            "udp"
        } else if self.is_alias() {
            "alias"
        } else if self.is_script() && !self.docker_container_id.is_empty() && every {
            "docker"
        } else if self.is_script() {
            "script"
        } else if !self.h2ping.is_empty() && every {
            "h2ping"
        } else if !self.os_service.is_empty() && every {
            "os_service"
        } else {
            ""
        }
    }
}

/// `structs.ServiceAddress` as decoded (Go `int` port).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TaggedAddress {
    pub(crate) address: String,
    pub(crate) port: i64,
}

/// `structs.Weights` as decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DecodedWeights {
    pub(crate) passing: i64,
    pub(crate) warning: i64,
}

/// `structs.ServiceDefinition`, the register body.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServiceDefinition {
    pub(crate) kind: String,
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) tags: Option<Vec<String>>,
    pub(crate) address: String,
    pub(crate) tagged_addresses: Option<BTreeMap<String, TaggedAddress>>,
    pub(crate) meta: Option<StringMap>,
    pub(crate) port: i64,
    pub(crate) socket_path: String,
    pub(crate) check: CheckType,
    /// `None` elements are JSON `null`s (Go's nil `*CheckType`).
    pub(crate) checks: Option<Vec<Option<CheckType>>>,
    pub(crate) weights: Option<DecodedWeights>,
    pub(crate) enable_tag_override: bool,
}

//------------ Decoding ----------------------------------------------------------

/// The Go names of `ServiceDefinition`'s JSON fields, with the snake_case
/// aliases of its `UnmarshalJSON`.
const SERVICE_FIELDS: &[&str] = &[
    "enable_tag_override",
    "tagged_addresses",
    "Kind",
    "ID",
    "Name",
    "Tags",
    "Address",
    "TaggedAddresses",
    "Meta",
    "Port",
    "SocketPath",
    "Check",
    "Checks",
    "Weights",
    "Token",
    "EnableTagOverride",
    "Locality",
    "Proxy",
    "Connect",
];

/// The Go names of `CheckType`'s JSON fields, with the fields and aliases
/// of its `UnmarshalJSON` helper (`ServiceID` and `service_id` are
/// accepted and dropped there).
const CHECK_FIELDS: &[&str] = &[
    "Interval",
    "Timeout",
    "TTL",
    "DeregisterCriticalServiceAfter",
    "args",
    "script_args",
    "deregister_critical_service_after",
    "docker_container_id",
    "tls_server_name",
    "tls_skip_verify",
    "tcp_use_tls",
    "grpc_use_tls",
    "h2ping_use_tls",
    "ServiceID",
    "service_id",
    "CheckID",
    "Name",
    "Status",
    "Notes",
    "ScriptArgs",
    "HTTP",
    "H2PING",
    "H2PingUseTLS",
    "Header",
    "Method",
    "Body",
    "DisableRedirects",
    "TCP",
    "TCPUseTLS",
    "UDP",
    "AliasNode",
    "AliasService",
    "DockerContainerID",
    "Shell",
    "GRPC",
    "GRPCUseTLS",
    "OSService",
    "TLSServerName",
    "TLSSkipVerify",
    "SuccessBeforePassing",
    "FailuresBeforeWarning",
    "FailuresBeforeCritical",
    "ProxyHTTP",
    "ProxyGRPC",
    "OutputMaxSize",
];

/// Where a value is decoded into, for Go's type-error text: the name of
/// the innermost struct type (empty for Consul's anonymous helper structs)
/// and the field path from the top of the decode.
#[derive(Clone)]
struct At {
    strukt: &'static str,
    path: String,
}

impl At {
    fn top() -> Self {
        Self {
            strukt: "",
            path: String::new(),
        }
    }

    fn field(&self, strukt: &'static str, name: &str) -> Self {
        let path = if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        };
        Self { strukt, path }
    }
}

/// One `encoding/json` decode: the first error recorded so far.
#[derive(Default)]
struct Decoder {
    saved: Option<String>,
}

/// How Go names a JSON value in `UnmarshalTypeError`.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_error(what: &str, at: &At, ty: &str) -> String {
    if at.path.is_empty() {
        format!("json: cannot unmarshal {what} into Go value of type {ty}")
    } else {
        format!(
            "json: cannot unmarshal {what} into Go struct field {}.{} of type {ty}",
            at.strukt, at.path
        )
    }
}

impl Decoder {
    fn save(&mut self, error: String) {
        self.saved.get_or_insert(error);
    }

    fn mismatch(&mut self, v: &Value, at: &At, ty: &str) {
        self.save(type_error(json_kind(v), at, ty));
    }

    /// The object's entries matched to `names` (exact name first, then
    /// case-insensitively), in document order; unknown keys are recorded.
    fn fields<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        names: &[&'static str],
    ) -> Vec<(&'static str, &'v Value)> {
        let mut out = Vec::new();
        for (key, value) in obj {
            let name = names
                .iter()
                .find(|n| **n == key)
                .or_else(|| names.iter().find(|n| n.eq_ignore_ascii_case(key)));
            match name {
                Some(name) => out.push((*name, value)),
                None => self.save(format!("json: unknown field {key:?}")),
            }
        }
        out
    }

    /// A Go `string` (`null` leaves it unchanged: `None`).
    fn string(&mut self, v: &Value, at: &At, ty: &str) -> Option<String> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => {
                self.mismatch(other, at, ty);
                None
            }
        }
    }

    /// A Go `int`: only integer literals in range fit.
    fn int(&mut self, v: &Value, at: &At) -> Option<i64> {
        match v {
            Value::Null => None,
            Value::Number(n) => match n.as_i64() {
                Some(i) => Some(i),
                None => {
                    self.save(type_error(&format!("number {n}"), at, "int"));
                    None
                }
            },
            other => {
                self.mismatch(other, at, "int");
                None
            }
        }
    }

    fn boolean(&mut self, v: &Value, at: &At) -> Option<bool> {
        match v {
            Value::Null => None,
            Value::Bool(b) => Some(*b),
            other => {
                self.mismatch(other, at, "bool");
                None
            }
        }
    }

    /// A Go `[]string`: `null` leaves it nil, `null` elements become "".
    fn strings(&mut self, v: &Value, at: &At) -> Option<Vec<String>> {
        match v {
            Value::Null => None,
            Value::Array(items) => Some(
                items
                    .iter()
                    .map(|item| self.string(item, at, "string").unwrap_or_default())
                    .collect(),
            ),
            other => {
                self.mismatch(other, at, "[]string");
                None
            }
        }
    }

    /// A Go `map[string]string`: `null` values become "".
    fn string_map(&mut self, v: &Value, at: &At) -> Option<StringMap> {
        match v {
            Value::Null => None,
            Value::Object(obj) => Some(
                obj.iter()
                    .map(|(k, v)| (k.clone(), self.string(v, at, "string").unwrap_or_default()))
                    .collect(),
            ),
            other => {
                self.mismatch(other, at, "map[string]string");
                None
            }
        }
    }

    /// A Go `map[string][]string` (a check's `Header`).
    fn header(&mut self, v: &Value, at: &At) -> Option<BTreeMap<String, Vec<String>>> {
        match v {
            Value::Null => None,
            Value::Object(obj) => Some(
                obj.iter()
                    .map(|(k, v)| (k.clone(), self.strings(v, at).unwrap_or_default()))
                    .collect(),
            ),
            other => {
                self.mismatch(other, at, "map[string][]string");
                None
            }
        }
    }

    fn weights(&mut self, v: &Value, at: &At, into: &mut Option<DecodedWeights>) {
        match v {
            Value::Null => *into = None,
            Value::Object(obj) => {
                let w = into.get_or_insert_with(DecodedWeights::default);
                for (name, value) in self.fields(obj, &["Passing", "Warning"]) {
                    let at = at.field("Weights", name);
                    let slot = if name == "Passing" {
                        &mut w.passing
                    } else {
                        &mut w.warning
                    };
                    if let Some(i) = self.int(value, &at) {
                        *slot = i;
                    }
                }
            }
            other => self.mismatch(other, at, "structs.Weights"),
        }
    }

    fn tagged_addresses(&mut self, v: &Value, at: &At) -> Option<BTreeMap<String, TaggedAddress>> {
        let obj = match v {
            Value::Null => return None,
            Value::Object(obj) => obj,
            other => {
                self.mismatch(other, at, "map[string]structs.ServiceAddress");
                return None;
            }
        };
        let mut out = BTreeMap::new();
        for (key, value) in obj {
            let mut addr = TaggedAddress::default();
            match value {
                Value::Null => {}
                Value::Object(fields) => {
                    for (name, value) in self.fields(fields, &["Address", "Port"]) {
                        let at = at.field("ServiceAddress", name);
                        if name == "Address" {
                            if let Some(s) = self.string(value, &at, "string") {
                                addr.address = s;
                            }
                        } else if let Some(p) = self.int(value, &at) {
                            addr.port = p;
                        }
                    }
                }
                other => self.mismatch(other, at, "structs.ServiceAddress"),
            }
            out.insert(key.clone(), addr);
        }
        Some(out)
    }
}

/// A Go `time.Duration` given to `CheckType.UnmarshalJSON` as `interface{}`:
/// a string is parsed as a Go duration, a number taken as nanoseconds,
/// anything else ignored. `Ok(None)`: nothing set.
fn duration(v: Option<&Value>) -> Result<Option<i64>, String> {
    match v {
        Some(Value::String(s)) => parse_go_duration(s).map(|d| Some(d.0)),
        Some(Value::Number(n)) => Ok(n.as_f64().map(|f| f as i64)),
        _ => Ok(None),
    }
}

/// `CheckType.UnmarshalJSON` on `v`, decoded at field `at` of the service
/// definition. Its error ends the whole decode.
fn decode_check(v: &Value, at: &At) -> Result<CheckType, String> {
    let obj = match v {
        // `null` reaches `UnmarshalJSON`, which sets nothing.
        Value::Null => return Ok(CheckType::default()),
        Value::Object(obj) => obj,
        other => return Err(type_error(json_kind(other), at, "structs.CheckType")),
    };
    let mut d = Decoder::default();
    let mut c = CheckType::default();
    // `interface{}` helper fields, and the snake_case aliases.
    let (mut interval, mut timeout, mut ttl, mut dcsa, mut dcsa_snake) =
        (None, None, None, None, None);
    let (mut args, mut script_args_snake) = (None, None);
    let (mut docker_snake, mut tls_name_snake) = (String::new(), String::new());
    let (mut skip_verify_snake, mut tcp_tls_snake, mut grpc_tls_snake, mut h2_tls_snake) =
        (false, false, false, None);
    let mut h2_tls = None;
    for (name, value) in d.fields(obj, CHECK_FIELDS) {
        let at = at.field("", name);
        let s = |d: &mut Decoder, slot: &mut String| {
            if let Some(v) = d.string(value, &at, "string") {
                *slot = v;
            }
        };
        let b = |d: &mut Decoder, slot: &mut bool| {
            if let Some(v) = d.boolean(value, &at) {
                *slot = v;
            }
        };
        let i = |d: &mut Decoder, slot: &mut i64| {
            if let Some(v) = d.int(value, &at) {
                *slot = v;
            }
        };
        // `interface{}` keeps the last value given, `null` included.
        let any = |slot: &mut Option<Value>| *slot = Some(value.clone());
        match name {
            "Interval" => any(&mut interval),
            "Timeout" => any(&mut timeout),
            "TTL" => any(&mut ttl),
            "DeregisterCriticalServiceAfter" => any(&mut dcsa),
            "deregister_critical_service_after" => any(&mut dcsa_snake),
            "args" => args = d.strings(value, &at),
            "script_args" => script_args_snake = d.strings(value, &at),
            "ScriptArgs" => c.script_args = d.strings(value, &at),
            "docker_container_id" => s(&mut d, &mut docker_snake),
            "tls_server_name" => s(&mut d, &mut tls_name_snake),
            "tls_skip_verify" => b(&mut d, &mut skip_verify_snake),
            "tcp_use_tls" => b(&mut d, &mut tcp_tls_snake),
            "grpc_use_tls" => b(&mut d, &mut grpc_tls_snake),
            "h2ping_use_tls" => h2_tls_snake = d.boolean(value, &at).or(h2_tls_snake),
            "H2PingUseTLS" => h2_tls = d.boolean(value, &at).or(h2_tls),
            "ServiceID" | "service_id" => {
                d.string(value, &at, "string");
            }
            "CheckID" => s(&mut d, &mut c.check_id),
            "Name" => s(&mut d, &mut c.name),
            "Status" => s(&mut d, &mut c.status),
            "Notes" => s(&mut d, &mut c.notes),
            "HTTP" => s(&mut d, &mut c.http),
            "H2PING" => s(&mut d, &mut c.h2ping),
            "Header" => c.header = d.header(value, &at),
            "Method" => s(&mut d, &mut c.method),
            "Body" => s(&mut d, &mut c.body),
            "DisableRedirects" => b(&mut d, &mut c.disable_redirects),
            "TCP" => s(&mut d, &mut c.tcp),
            "TCPUseTLS" => b(&mut d, &mut c.tcp_use_tls),
            "UDP" => s(&mut d, &mut c.udp),
            "AliasNode" => s(&mut d, &mut c.alias_node),
            "AliasService" => s(&mut d, &mut c.alias_service),
            "DockerContainerID" => s(&mut d, &mut c.docker_container_id),
            "Shell" => s(&mut d, &mut c.shell),
            "GRPC" => s(&mut d, &mut c.grpc),
            "GRPCUseTLS" => b(&mut d, &mut c.grpc_use_tls),
            "OSService" => s(&mut d, &mut c.os_service),
            "TLSServerName" => s(&mut d, &mut c.tls_server_name),
            "TLSSkipVerify" => b(&mut d, &mut c.tls_skip_verify),
            "SuccessBeforePassing" => i(&mut d, &mut c.success_before_passing),
            "FailuresBeforeWarning" => i(&mut d, &mut c.failures_before_warning),
            "FailuresBeforeCritical" => i(&mut d, &mut c.failures_before_critical),
            "ProxyHTTP" => s(&mut d, &mut c.proxy_http),
            "ProxyGRPC" => s(&mut d, &mut c.proxy_grpc),
            "OutputMaxSize" => i(&mut d, &mut c.output_max_size),
            _ => unreachable!("every name in CHECK_FIELDS is handled"),
        }
    }
    if let Some(e) = d.saved {
        return Err(e);
    }
    // The fix-ups after the helper decode, in `UnmarshalJSON`'s order.
    if c.script_args.as_ref().is_none_or(Vec::is_empty) {
        c.script_args = args.or(c.script_args);
    }
    if c.script_args.as_ref().is_none_or(Vec::is_empty) {
        c.script_args = script_args_snake.or(c.script_args);
    }
    if c.docker_container_id.is_empty() {
        c.docker_container_id = docker_snake;
    }
    if c.tls_server_name.is_empty() {
        c.tls_server_name = tls_name_snake;
    }
    c.tls_skip_verify |= skip_verify_snake;
    c.tcp_use_tls |= tcp_tls_snake;
    c.grpc_use_tls |= grpc_tls_snake;
    let dcsa = match dcsa {
        None | Some(Value::Null) => dcsa_snake,
        given => given,
    };
    for (raw, slot) in [
        (interval, &mut c.interval),
        (timeout, &mut c.timeout),
        (ttl, &mut c.ttl),
        (dcsa, &mut c.deregister_critical_service_after),
    ] {
        if let Some(nanos) = duration(raw.as_ref())? {
            *slot = nanos;
        }
    }
    // H2PING defaults to TLS unless told otherwise.
    c.h2ping_use_tls = match (c.h2ping.is_empty(), h2_tls_snake, h2_tls) {
        (false, Some(false), _) => false,
        (false, _, Some(v)) => v,
        (false, _, None) => true,
        (true, Some(true), _) => true,
        (true, _, v) => v.unwrap_or(false),
    };
    Ok(c)
}

/// Decodes a register body as `decodeBody` into `structs.ServiceDefinition`
/// does. The error is the text Consul puts after `Request decode failed: `.
pub(crate) fn decode_service_definition(body: &[u8]) -> Result<ServiceDefinition, String> {
    let value = match serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .next()
    {
        None => return Err("EOF".into()),
        Some(Err(e)) if e.is_eof() => return Err("unexpected EOF".into()),
        Some(Err(e)) => return Err(e.to_string()),
        Some(Ok(v)) => v,
    };
    let obj = match &value {
        Value::Null => return Ok(ServiceDefinition::default()),
        Value::Object(obj) => obj,
        other => {
            return Err(type_error(
                json_kind(other),
                &At::top(),
                "structs.ServiceDefinition",
            ));
        }
    };
    let mut d = Decoder::default();
    let mut def = ServiceDefinition::default();
    let (mut tag_override_snake, mut tagged_snake) = (false, None);
    for (name, value) in d.fields(obj, SERVICE_FIELDS) {
        let at = At::top().field("", name);
        let s = |d: &mut Decoder, slot: &mut String, ty: &str| {
            if let Some(v) = d.string(value, &at, ty) {
                *slot = v;
            }
        };
        match name {
            "enable_tag_override" => {
                if let Some(b) = d.boolean(value, &at) {
                    tag_override_snake = b;
                }
            }
            "tagged_addresses" => tagged_snake = d.tagged_addresses(value, &at),
            "Kind" => s(&mut d, &mut def.kind, "structs.ServiceKind"),
            "ID" => s(&mut d, &mut def.id, "string"),
            "Name" => s(&mut d, &mut def.name, "string"),
            "Tags" => def.tags = d.strings(value, &at),
            "Address" => s(&mut d, &mut def.address, "string"),
            "TaggedAddresses" => def.tagged_addresses = d.tagged_addresses(value, &at),
            "Meta" => def.meta = d.string_map(value, &at),
            "Port" => {
                if let Some(p) = d.int(value, &at) {
                    def.port = p;
                }
            }
            "SocketPath" => s(&mut d, &mut def.socket_path, "string"),
            "Check" => def.check = decode_check(value, &at)?,
            "Checks" => match value {
                Value::Null => def.checks = None,
                Value::Array(items) => {
                    let mut checks = Vec::new();
                    for item in items {
                        checks.push(match item {
                            Value::Null => None,
                            item => Some(decode_check(item, &at)?),
                        });
                    }
                    def.checks = Some(checks);
                }
                other => d.mismatch(other, &at, "structs.CheckTypes"),
            },
            "Weights" => d.weights(value, &at, &mut def.weights),
            "Token" => s(&mut d, &mut String::new(), "string"),
            "EnableTagOverride" => {
                if let Some(b) = d.boolean(value, &at) {
                    def.enable_tag_override = b;
                }
            }
            // Not modelled: accepted with any content, ignored.
            "Locality" | "Proxy" | "Connect" => {}
            _ => unreachable!("every name in SERVICE_FIELDS is handled"),
        }
    }
    if let Some(e) = d.saved {
        return Err(e);
    }
    def.enable_tag_override |= tag_override_snake;
    if def.tagged_addresses.as_ref().is_none_or(BTreeMap::is_empty) {
        def.tagged_addresses = tagged_snake.or(def.tagged_addresses);
    }
    Ok(def)
}

//------------ Validation ----------------------------------------------------------

/// `MetaKeyReservedPrefix`.
const META_RESERVED_PREFIX: &str = "consul-";
/// `metaMaxKeyPairs`.
const META_MAX_PAIRS: usize = 64;
/// `metaKeyMaxLength`.
const META_KEY_MAX: usize = 128;
/// `metaValueMaxLength`.
const META_VALUE_MAX: usize = 512;

/// `structs.ValidateWeights`.
fn validate_weights(w: &DecodedWeights) -> Result<(), &'static str> {
    if w.passing < 1 {
        return Err("Passing must be greater than 0");
    }
    if w.warning < 0 {
        return Err("Warning must be greater or equal than 0");
    }
    if w.passing > 65535 || w.warning > 65535 {
        return Err("DNS Weight must be between 0 and 65535");
    }
    Ok(())
}

/// `structs.ValidateServiceMetadata` for a typical service. Go walks the
/// map in random order; this walks it in key order.
fn validate_meta(meta: &StringMap) -> Result<(), String> {
    if meta.len() > META_MAX_PAIRS {
        return Err(format!(
            "Node metadata cannot contain more than {META_MAX_PAIRS} key/value pairs"
        ));
    }
    for (key, value) in meta {
        let why = if key.is_empty() {
            Some("Key cannot be blank".to_owned())
        } else if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            Some("Key contains invalid characters".to_owned())
        } else if key.len() > META_KEY_MAX {
            Some(format!(
                "Key is too long (limit: {META_KEY_MAX} characters)"
            ))
        } else if key.starts_with(META_RESERVED_PREFIX) {
            Some(format!(
                "Key prefix '{META_RESERVED_PREFIX}' is reserved for internal use"
            ))
        } else if value.len() > META_VALUE_MAX {
            Some(format!(
                "Value is too long (limit: {META_VALUE_MAX} characters)"
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(format!(
                "Couldn't load metadata pair ('{key}', '{value}'): {why}"
            ));
        }
    }
    Ok(())
}

/// `ipaddr.IsAny` on a string.
fn is_any_address(address: &str) -> bool {
    matches!(address, "0.0.0.0" | "::" | "[::]")
}

/// Whether `address` parses as Go's `net.ParseIP` would, and as which
/// family: `Some(true)` for IPv4 (IPv4-mapped IPv6 included, as `To4`
/// does), `Some(false)` for IPv6.
pub(crate) fn ip_family_is_v4(address: &str) -> Option<bool> {
    match address.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(_) => Some(true),
        std::net::IpAddr::V6(v6) => Some(v6.to_ipv4_mapped().is_some()),
    }
}

impl ServiceDefinition {
    /// Runs the checks of `AgentRegisterService` and `Agent.AddService` in
    /// their order, with their statuses and texts, and returns the checks
    /// to register (`CheckTypes`: `Check` unless empty, then `Checks`).
    ///
    /// Simulator limits, refused with texts of their own: a `Kind` other
    /// than a typical service (400), and ports outside 0–65535 (400; Go's
    /// `int` takes them, the catalog model here cannot).
    pub(crate) fn validate(&self) -> Result<Vec<CheckType>, Refusal> {
        let bad = |text: String| (400, text);
        if self.name.is_empty() {
            return Err(bad("Missing service name".into()));
        }
        if is_any_address(&self.address) {
            return Err(bad("Invalid service address".into()));
        }
        if let Some(w) = &self.weights {
            validate_weights(w).map_err(|e| bad(format!("Invalid Weights: {e}")))?;
        }
        if let Some(meta) = &self.meta {
            validate_meta(meta).map_err(|e| bad(format!("Invalid Service Meta: {e}")))?;
        }
        if !self.kind.is_empty() {
            return Err(bad(format!(
                "consul-sim does not model services of Kind {:?}",
                self.kind
            )));
        }
        let mut checks = Vec::new();
        if !self.check.is_empty() {
            self.check
                .validate()
                .map_err(|e| bad(format!("Invalid check: {e}")))?;
            checks.push(self.check.clone());
        }
        for check in self.checks.iter().flatten() {
            let Some(check) = check else {
                return Err((
                    500,
                    "consul-sim: a null element in Checks makes a real agent's handler \
                     dereference a nil pointer"
                        .into(),
                ));
            };
            check
                .validate()
                .map_err(|e| bad(format!("Invalid check: {e}")))?;
            checks.push(check.clone());
        }
        if checks.iter().any(|c| {
            !c.status.is_empty() && ![PASSING, WARNING, CRITICAL].contains(&c.status.as_str())
        }) {
            return Err(bad(
                "Status for checks must 'passing', 'warning', 'critical'".into(),
            ));
        }
        let out_of_range = |p: i64| !(0..=65535).contains(&p);
        if out_of_range(self.port) {
            return Err(bad(format!(
                "consul-sim cannot store Port {} (outside 0-65535; Consul would accept it)",
                self.port
            )));
        }
        for (key, addr) in self.tagged_addresses.iter().flatten() {
            if out_of_range(addr.port) {
                return Err(bad(format!(
                    "consul-sim cannot store port {} of tagged address {key:?} \
                     (outside 0-65535; Consul would accept it)",
                    addr.port
                )));
            }
        }
        // `validateService`: plain errors, so 500s. (Consul checks
        // lan_ipv6 twice and never wan_ipv6.)
        let tagged = self.tagged_addresses.clone().unwrap_or_default();
        for (key, want_v4) in [("lan_ipv4", true), ("wan_ipv4", true), ("lan_ipv6", false)] {
            if let Some(addr) = tagged.get(key)
                && ip_family_is_v4(&addr.address) != Some(want_v4)
            {
                let family = if want_v4 { "ipv4" } else { "ipv6" };
                return Err((
                    500,
                    format!("Service tagged address {key:?} must be a valid {family} address"),
                ));
            }
        }
        // `addCheck` with `enable_script_checks` off (the default).
        if checks.iter().any(CheckType::is_script) {
            return Err((
                500,
                "Scripts are disabled on this agent from remote calls; to enable, \
                 configure 'enable_script_checks' to true"
                    .into(),
            ));
        }
        Ok(checks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str) -> Result<ServiceDefinition, String> {
        decode_service_definition(body.as_bytes())
    }

    #[test]
    fn keys_match_case_insensitively_and_unknown_ones_fail() {
        let def = decode(
            r#"{"name":"web","ID":"w1","PORT":80,"check":{"http":"http://x/","INTERVAL":"10s"}}"#,
        )
        .unwrap();
        assert_eq!(
            (def.name.as_str(), def.id.as_str(), def.port),
            ("web", "w1", 80)
        );
        assert_eq!(def.check.interval, 10_000_000_000);
        assert_eq!(
            decode(r#"{"Name":"web","Foo":1}"#).unwrap_err(),
            r#"json: unknown field "Foo""#
        );
        assert_eq!(
            decode(r#"{"Name":"web","Check":{"ID":"c"}}"#).unwrap_err(),
            r#"json: unknown field "ID""#
        );
        assert_eq!(
            decode(r#"{"Name":"web","success_before_passing":1}"#).unwrap_err(),
            r#"json: unknown field "success_before_passing""#
        );
        // Snake aliases and the ignored ServiceID.
        let def = decode(
            r#"{"Name":"w","enable_tag_override":true,"Check":{"ServiceID":"x","args":["a"],"deregister_critical_service_after":"1m","TTL":"5s"}}"#,
        )
        .unwrap();
        assert!(def.enable_tag_override);
        assert_eq!(def.check.script_args, Some(vec!["a".to_owned()]));
        assert_eq!(def.check.deregister_critical_service_after, 60_000_000_000);
    }

    #[test]
    fn go_error_texts() {
        assert_eq!(decode("").unwrap_err(), "EOF");
        assert_eq!(decode("  \n").unwrap_err(), "EOF");
        assert_eq!(decode(r#"{"Name":"#).unwrap_err(), "unexpected EOF");
        assert_eq!(
            decode(r#"{"Name":"w","Check":{"Interval":"abc"}}"#).unwrap_err(),
            r#"time: invalid duration "abc""#
        );
        assert_eq!(
            decode(r#"{"Port":"80"}"#).unwrap_err(),
            "json: cannot unmarshal string into Go struct field .Port of type int"
        );
        assert_eq!(
            decode(r#"{"Weights":{"Passing":"x"}}"#).unwrap_err(),
            "json: cannot unmarshal string into Go struct field Weights.Weights.Passing of type int"
        );
        assert_eq!(
            decode("[1]").unwrap_err(),
            "json: cannot unmarshal array into Go value of type structs.ServiceDefinition"
        );
        // The first recorded error wins; a check's error ends the decode.
        assert_eq!(
            decode(r#"{"A":1,"Port":"x"}"#).unwrap_err(),
            r#"json: unknown field "A""#
        );
        assert_eq!(
            decode(r#"{"A":1,"Check":{"B":2}}"#).unwrap_err(),
            r#"json: unknown field "B""#
        );
        // Trailing data after the first value is not read.
        assert_eq!(decode(r#"{"Name":"w"} trailing"#).unwrap().name, "w");
    }

    #[test]
    fn durations_take_strings_or_nanoseconds() {
        let def = decode(r#"{"Check":{"TTL":1500000000,"Timeout":"2s","Interval":true}}"#).unwrap();
        assert_eq!(
            (def.check.ttl, def.check.timeout, def.check.interval),
            (1_500_000_000, 2_000_000_000, 0)
        );
    }

    #[test]
    fn validation_order_and_texts() {
        let v = |body: &str| decode(body).unwrap().validate().map(|c| c.len());
        assert_eq!(v("{}"), Err((400, "Missing service name".into())));
        assert_eq!(
            v(r#"{"Name":"w","Address":"::"}"#),
            Err((400, "Invalid service address".into()))
        );
        assert_eq!(
            v(r#"{"Name":"w","Weights":{"Passing":0}}"#),
            Err((
                400,
                "Invalid Weights: Passing must be greater than 0".into()
            ))
        );
        assert_eq!(
            v(r#"{"Name":"w","Meta":{"consul-x":"1"}}"#),
            Err((400, "Invalid Service Meta: Couldn't load metadata pair ('consul-x', '1'): Key prefix 'consul-' is reserved for internal use".into()))
        );
        assert_eq!(
            v(r#"{"Name":"w","Check":{"HTTP":"http://x/"}}"#),
            Err((400, "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks".into()))
        );
        assert_eq!(
            v(r#"{"Name":"w","Checks":[{}]}"#),
            Err((400, "Invalid check: TTL must be > 0 for TTL checks".into()))
        );
        assert_eq!(
            v(r#"{"Name":"w","Check":{"TTL":"5s","Status":"ok"}}"#),
            Err((
                400,
                "Status for checks must 'passing', 'warning', 'critical'".into()
            ))
        );
        assert_eq!(
            v(r#"{"Name":"w","TaggedAddresses":{"lan_ipv4":{"Address":"::1"}}}"#),
            Err((
                500,
                "Service tagged address \"lan_ipv4\" must be a valid ipv4 address".into()
            ))
        );
        assert_eq!(
            v(r#"{"Name":"w","Check":{}, "Checks":[{"TTL":"1s"},{"TTL":"2s"}]}"#),
            Ok(2)
        );
        assert_eq!(
            v(r#"{"Name":"w","Check":{"ServiceID":"x"}}"#),
            Ok(0),
            "empty after dropping ServiceID"
        );
    }
}
