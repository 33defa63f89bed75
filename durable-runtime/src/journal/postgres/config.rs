//! Where a PostgreSQL journal is: the URL a user gives, read into tokio-postgres's
//! connection settings and the schema the journal's tables live in, and shown without
//! its password.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{StoreError, StoreErrorKind};
use crate::journal::is_postgres_url;

/// The schema a journal's tables live in unless the URL names another (`?schema=`).
pub(crate) const DEFAULT_SCHEMA: &str = "durable";

/// A PostgreSQL journal's location, parsed. Holds the password inside tokio-postgres's
/// [`Config`](tokio_postgres::Config), whose `Debug` hides it, and never the URL.
#[derive(Clone)]
pub(crate) struct PgConfig {
    pub(crate) connect: tokio_postgres::Config,
    pub(crate) schema: String,
    /// TLS, verified, when the URL asks for it (`sslmode=require` or `verify-full`).
    pub(crate) tls: Option<super::tls::Tls>,
    /// Whether durable names its connections (`application_name`): unless the URL
    /// names them.
    named: bool,
    /// The URL without its password, and with the schema: what messages show.
    shown: String,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PgConfig").field(&self.shown).finish()
    }
}

impl PgConfig {
    /// Reads a URL: `postgres://user:password@host:port/database?schema=name`, with any
    /// of libpq's URL options that tokio-postgres understands (`connect_timeout`,
    /// `application_name`, `options`, several hosts, ...). `schema` is durable's own:
    /// the PostgreSQL schema that holds the journal's tables (`durable` by default).
    pub(crate) fn parse(url: &str) -> Result<PgConfig, StoreError> {
        // Errors name what is wrong, never the URL itself: it may hold a password.
        let shown_for_errors = PathBuf::from("postgres://…");
        let refuse = |message: String| {
            StoreError::new(
                shown_for_errors.clone(),
                StoreErrorKind::NotAJournal,
                message,
            )
        };
        if !is_postgres_url(url) {
            return Err(refuse(
                "a PostgreSQL journal is given as a URL that starts with postgres:// or \
                 postgresql://"
                    .to_owned(),
            ));
        }
        // The query starts at the first `?` after the user name and password, which
        // may hold one (and `@`): the host part ends at the last `@`.
        let after_at = url.rfind('@').map_or(0, |at| at + 1);
        let (base, query) = match url[after_at..].find('?') {
            Some(q) => (&url[..after_at + q], Some(&url[after_at + q + 1..])),
            None => (url, None),
        };
        let mut schema = DEFAULT_SCHEMA.to_owned();
        let mut kept = Vec::new();
        let mut tls = false;
        let mut root_cert = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "schema" => schema = value.to_owned(),
                "sslmode" => match value {
                    "disable" | "allow" | "prefer" => {
                        kept.push("sslmode=disable");
                    }
                    "require" | "verify-full" => tls = true,
                    "verify-ca" => {
                        return Err(refuse(
                            "sslmode=verify-ca checks the certificate but not the host name, \
                             which durable always checks: use sslmode=verify-full (with \
                             sslrootcert for a private CA)"
                                .to_owned(),
                        ));
                    }
                    other => {
                        return Err(refuse(format!(
                            "sslmode={other} is not one of disable, prefer, require, verify-full"
                        )));
                    }
                },
                "sslrootcert" => root_cert = Some(std::path::PathBuf::from(value)),
                _ => kept.push(pair),
            }
        }
        check_schema_name(&schema).map_err(refuse)?;
        let rebuilt = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut connect = tokio_postgres::Config::from_str(&rebuilt).map_err(|e| {
            // tokio-postgres names the option it could not read, never its value.
            refuse(format!("the PostgreSQL URL is not valid: {}", chain(&e)))
        })?;
        let unescaped = connect.get_hosts().iter().any(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.contains(['@', '/', '?', '#']),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => false,
        });
        if unescaped {
            return Err(refuse(
                "the PostgreSQL URL's user name or password holds a character a URL must \
                 escape: write @ as %40, ? as %3F, / as %2F and # as %23"
                    .to_owned(),
            ));
        }
        // A server that stops answering fails the connection within a minute, rather
        // than holding every write (and the close) for TCP's two hours.
        if connect.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            connect.keepalives_idle(Duration::from_secs(15));
        }
        if connect.get_tcp_user_timeout().is_none() {
            connect.tcp_user_timeout(Duration::from_secs(30));
        }
        if connect.get_connect_timeout().is_none() {
            connect.connect_timeout(Duration::from_secs(10));
        }
        let named = connect.get_application_name().is_none();
        if root_cert.is_some() && !tls {
            return Err(refuse(
                "sslrootcert is given but no TLS is asked for: add sslmode=verify-full".to_owned(),
            ));
        }
        let tls = if tls {
            connect.ssl_mode(tokio_postgres::config::SslMode::Require);
            Some(super::tls::Tls::new(root_cert.as_deref()).map_err(refuse)?)
        } else {
            None
        };
        let shown = shown(&connect, &schema);
        Ok(PgConfig {
            connect,
            schema,
            named,
            tls,
            shown,
        })
    }

    /// The settings of one of durable's connections: `durable writer`, `durable
    /// reader` or `durable listener` as its `application_name` (what
    /// `pg_stat_activity` shows), unless the URL gave one.
    pub(crate) fn for_connection(&self, role: &str) -> tokio_postgres::Config {
        let mut c = self.connect.clone();
        if self.named {
            c.application_name(format!("durable {role}"));
        }
        c
    }

    /// The journal as messages show it: `postgres://user@host:port/database?schema=s`,
    /// never with the password.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }
}

/// Refuses a schema name that would need quoting: durable writes it into its SQL.
fn check_schema_name(schema: &str) -> Result<(), String> {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if first_ok
        && schema.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        Ok(())
    } else {
        Err(format!(
            "`{schema}` cannot name the journal's schema: use 1 to 63 lowercase letters, digits \
             and underscores, starting with a letter or an underscore"
        ))
    }
}

/// The URL as shown: user, hosts, ports, database and schema, no password.
fn shown(c: &tokio_postgres::Config, schema: &str) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            match c.get_ports().get(i).or(c.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let user = c.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let db = c.get_dbname().unwrap_or_default();
    format!("postgres://{user}{}/{db}?schema={schema}", hosts.join(","))
}

/// An error's message with its causes: tokio-postgres's `Display` leaves out its
/// source since 0.7.15.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !message.contains(&said) {
            message.push_str(": ");
            message.push_str(&said);
        }
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        let sentinel = "s3cr3t-Sentinel";
        for url in [
            format!("postgres://me:{sentinel}@db.example:5433/app"),
            format!("postgresql://me:{sentinel}@db.example/app?schema=jobs&connect_timeout=3"),
            format!("postgres://me:{sentinel}@h1:1,h2:2/app"),
            // A `?` in the password is not the query.
            format!("postgres://me:x?schema={sentinel}@h/app"),
            format!("postgres://me:{sentinel}/x@h/app"),
        ] {
            let c = PgConfig::parse(&url).expect("a valid URL");
            assert!(!c.shown().contains(sentinel), "{}", c.shown());
            assert!(!format!("{c:?}").contains(sentinel), "{c:?}");
        }
        // Invalid URLs: the error names the problem, never the password.
        for url in [
            format!("postgres://me:{sentinel}@h/app?nonsense=1"),
            format!("postgres://me:{sentinel}@h/app?schema=Bad-Name"),
            format!("postgres://me:{sentinel}@h/app?sslmode=verify-ca"),
            format!("postgres://me:{sentinel}@h/app?sslmode=verify-full&sslrootcert=/nonexistent"),
            format!("postgres://me:{sentinel}@h/app?sslrootcert=/etc/hostname"),
            format!("postgres://me:{sentinel}@h:notaport/app"),
            format!("mysql://me:{sentinel}@h/app"),
            // Unescaped `@`, `?` and `/` in the password.
            format!("postgres://me:{sentinel}@x@h/app"),
            format!("postgres://me:a@{sentinel}@h/app?schema=ok"),
        ] {
            let e = PgConfig::parse(&url).expect_err(&url);
            assert!(!e.to_string().contains(sentinel), "{e}");
            assert!(!format!("{e:?}").contains(sentinel), "{e:?}");
        }
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let c = PgConfig::parse("postgres://me:pa%3Fss@db/app?schema=jobs").expect("valid");
        assert_eq!(c.schema, "jobs");
        let c = PgConfig::parse("postgres://me:pa?ss@db/app?schema=jobs");
        // tokio-postgres reads the unescaped `?` as the end of the password's URL part
        // or refuses it; either way the schema is not taken from inside the password.
        if let Ok(c) = c {
            assert_eq!(c.schema, "jobs");
        }
    }

    #[test]
    fn a_url_is_shown_with_its_schema() {
        let c = PgConfig::parse("postgres://me:pw@db:5433/app").expect("valid");
        assert_eq!(c.shown(), "postgres://me@db:5433/app?schema=durable");
        assert_eq!(c.schema, "durable");
        let c = PgConfig::parse("postgres://me@db/app?schema=jobs_2").expect("valid");
        assert_eq!(c.schema, "jobs_2");
        assert!(PgConfig::parse("postgres://me@db/app?schema=").is_err());
        assert!(PgConfig::parse("postgres://me@db/app?schema=1a").is_err());
    }
}
