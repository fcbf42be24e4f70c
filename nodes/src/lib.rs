//! The `paloma` binary lives here once the client and replica issues land.
