//! NBD URLs: `nbd://HOST[:PORT][/EXPORT]` and `nbd+unix:///[EXPORT]?socket=PATH`
//! (the forms of the NBD URI specification apf supports; no TLS, no
//! percent-encoding).

use std::fmt;
use std::path::PathBuf;

/// The IANA port for NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdTarget {
    /// A TCP host and port.
    Tcp {
        /// Host name or address (an IPv6 address without brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix socket.
    Unix(PathBuf),
}

/// A parsed NBD URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUrl {
    /// Where.
    pub target: NbdTarget,
    /// The export's name ("" for the server's default).
    pub export: String,
}

/// Why a string is not an NBD URL apf can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{url:?} is not a usable NBD URL: {why}; use nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH"
)]
pub struct UrlError {
    /// The text given.
    pub url: String,
    /// What is wrong.
    pub why: &'static str,
}

/// The protocol's limit on export names.
const MAX_EXPORT: usize = 4096;

impl NbdUrl {
    /// Parses `nbd://HOST[:PORT][/EXPORT]` or `nbd+unix:///[EXPORT]?socket=PATH`.
    pub fn parse(url: &str) -> Result<NbdUrl, UrlError> {
        let err = |why| UrlError {
            url: url.to_string(),
            why,
        };
        if let Some(rest) = url.strip_prefix("nbd+unix://") {
            let rest = rest
                .strip_prefix('/')
                .ok_or_else(|| err("a Unix socket URL has no host (three slashes)"))?;
            let (export, query) = rest
                .split_once('?')
                .ok_or_else(|| err("it lacks ?socket=PATH"))?;
            let path = query
                .strip_prefix("socket=")
                .ok_or_else(|| err("the only query it takes is socket=PATH"))?;
            if path.is_empty() || path.contains('&') {
                return Err(err("the only query it takes is one non-empty socket=PATH"));
            }
            return Ok(NbdUrl {
                target: NbdTarget::Unix(PathBuf::from(path)),
                export: check_export(export).map_err(err)?,
            });
        }
        let rest = url.strip_prefix("nbd://").ok_or_else(|| {
            err(if url.starts_with("nbds") {
                "TLS (nbds) is not supported"
            } else {
                "it does not start with nbd:// or nbd+unix://"
            })
        })?;
        if rest.contains('?') || rest.contains('#') {
            return Err(err("a TCP URL takes no query or fragment"));
        }
        let (authority, export) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| err("an IPv6 address lacks its closing ]"))?;
            match after {
                "" => (h, None),
                p => (
                    h,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| err("junk after the IPv6 address"))?,
                    ),
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(err("the host is missing"));
        }
        if host.contains('@') {
            return Err(err("user names are not supported"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(err("the port is not a number from 1 to 65535")),
            },
        };
        Ok(NbdUrl {
            target: NbdTarget::Tcp {
                host: host.to_string(),
                port,
            },
            export: check_export(export).map_err(err)?,
        })
    }
}

fn check_export(export: &str) -> Result<String, &'static str> {
    if export.len() > MAX_EXPORT {
        return Err("the export name is longer than 4096 bytes");
    }
    if export.chars().any(char::is_control) {
        return Err("the export name has control characters");
    }
    Ok(export.to_string())
}

impl fmt::Display for NbdUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            NbdTarget::Tcp { host, port } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{}", self.export)
            }
            NbdTarget::Tcp { host, port } => write!(f, "nbd://{host}:{port}/{}", self.export),
            NbdTarget::Unix(p) => {
                write!(f, "nbd+unix:///{}?socket={}", self.export, p.display())
            }
        }
    }
}

impl std::str::FromStr for NbdUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<NbdUrl, UrlError> {
        NbdUrl::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16, export: &str) -> NbdUrl {
        NbdUrl {
            target: NbdTarget::Tcp {
                host: host.into(),
                port,
            },
            export: export.into(),
        }
    }

    #[test]
    fn good_urls() {
        assert_eq!(
            NbdUrl::parse("nbd://127.0.0.1:10810/pages"),
            Ok(tcp("127.0.0.1", 10810, "pages"))
        );
        assert_eq!(NbdUrl::parse("nbd://host"), Ok(tcp("host", 10809, "")));
        assert_eq!(
            NbdUrl::parse("nbd://[::1]:99/a/b"),
            Ok(tcp("::1", 99, "a/b"))
        );
        assert_eq!(
            NbdUrl::parse("nbd+unix:///e?socket=/tmp/s"),
            Ok(NbdUrl {
                target: NbdTarget::Unix("/tmp/s".into()),
                export: "e".into()
            })
        );
        for u in ["nbd://h:1/x", "nbd://[::1]:2/y", "nbd+unix:///z?socket=/s"] {
            assert_eq!(NbdUrl::parse(u).unwrap().to_string(), u);
        }
    }

    #[test]
    fn bad_urls_say_what_to_change() {
        for (u, why) in [
            ("http://x", "does not start with"),
            ("nbds://x", "TLS"),
            ("nbd://", "host is missing"),
            ("nbd://h:0/x", "port"),
            ("nbd://h:99999", "port"),
            ("nbd://h:x", "port"),
            ("nbd://h/x?y", "no query"),
            ("nbd://[::1/x", "closing ]"),
            ("nbd+unix:///x", "socket=PATH"),
            ("nbd+unix://h/x?socket=/s", "three slashes"),
            ("nbd+unix:///x?socket=", "socket=PATH"),
        ] {
            let e = NbdUrl::parse(u).unwrap_err().to_string();
            assert!(e.contains(why), "{u}: {e}");
            assert!(e.contains("use nbd://HOST:PORT/EXPORT"), "{e}");
            assert!(!e.contains('\n'));
        }
    }
}
