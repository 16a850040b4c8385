//! `prepared_queries.rs`'s tests again, over HTTPS: the fixture's simulator serves
//! TLS with its own CA and every answer must come over HTTP/2 (see
//! `common`), so each endpoint, blocking query, fault and `/_sim/` call
//! is checked on both transports.

#[path = "prepared_queries.rs"]
mod prepared_queries;
