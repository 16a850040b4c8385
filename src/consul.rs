//! Consul HTTP client and blocking watches (being written).
