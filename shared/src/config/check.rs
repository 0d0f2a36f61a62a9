//! The checks section validations share; each names the key it judges.

use super::ConfigError;

pub fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(())
}

pub fn rate(key: &str, v: f64) -> Result<(), ConfigError> {
    if !(v.is_finite() && v > 0.0) {
        return Err(ConfigError::new(key, "must be a positive number"));
    }
    Ok(())
}

pub fn fraction(key: &str, v: f64, what: &str) -> Result<(), ConfigError> {
    if !(0.0..=1.0).contains(&v) {
        return Err(ConfigError::new(key, format!("must be between {what}")));
    }
    Ok(())
}

/// A bucket must hold a full batch, or a largest batch could never pass.
pub fn burst(key: &str, v: u64, batch: u64) -> Result<(), ConfigError> {
    if v < batch {
        return Err(ConfigError::new(
            key,
            format!("must be at least gateway.max_events_per_batch ({batch}), or a full batch could never pass"),
        ));
    }
    Ok(())
}

pub fn not_blank(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.trim().is_empty() {
        return Err(ConfigError::new(key, "must not be empty"));
    }
    Ok(())
}

pub fn http_url(key: &str, v: &str) -> Result<(), ConfigError> {
    if !(v.starts_with("http://") || v.starts_with("https://")) {
        return Err(ConfigError::new(key, "must be an http:// or https:// URL"));
    }
    Ok(())
}

pub fn readable_file(key: &str, path: &str) -> Result<(), ConfigError> {
    if !std::path::Path::new(path).is_file() {
        return Err(ConfigError::new(
            key,
            format!("{path} is not a readable file"),
        ));
    }
    Ok(())
}

pub fn identifier(key: &str, v: &str) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !v.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        return Err(ConfigError::new(
            key,
            "must be an identifier (ASCII letters, digits and '_', not starting with a digit)",
        ));
    }
    Ok(())
}

/// An IP network from a CIDR (`10.0.0.0/8`) or a single address (`127.0.0.1`).
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}
