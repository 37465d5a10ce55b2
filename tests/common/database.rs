//! A database of each test's own: a SQLite file in a temporary folder, or a fresh PostgreSQL
//! database (dropped afterwards) when `KEYGATE_TEST_POSTGRES_URL` is set.

use tempfile::TempDir;

/// A database of the test's own.
pub enum TestDb {
    Sqlite {
        dir: TempDir,
    },
    Postgres {
        admin_url: String,
        name: String,
    },
    /// A database reached through another address (a proxy the test can cut).
    Through {
        inner: Box<TestDb>,
        url: String,
    },
    /// Another instance's database (several keygates on one): dropped with that one.
    Shared {
        url: String,
    },
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        TestDb::Sqlite {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A fresh PostgreSQL database, or `None` (the test then reports itself skipped) when
    /// `KEYGATE_TEST_POSTGRES_URL` is unset.
    pub async fn postgres() -> Option<TestDb> {
        use sqlx::Connection;
        let Ok(admin_url) = std::env::var("KEYGATE_TEST_POSTGRES_URL") else {
            eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
            return None;
        };
        let name = format!("keygate_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("postgres reachable");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        Some(TestDb::Postgres { admin_url, name })
    }

    /// This database reached at `host_port` instead (PostgreSQL only).
    pub fn through(self, host_port: &str) -> TestDb {
        let url = self.url();
        let rest = url.split_once("://").map_or("", |(_, r)| r);
        let (userinfo, path) = match rest.split_once('@') {
            Some((u, r)) => (
                format!("{u}@"),
                r.split_once('/').map_or("", |(_, p)| p).to_owned(),
            ),
            None => (
                String::new(),
                rest.split_once('/').map_or("", |(_, p)| p).to_owned(),
            ),
        };
        TestDb::Through {
            url: format!("postgres://{userinfo}{host_port}/{path}"),
            inner: Box::new(self),
        }
    }

    /// The same database, for another keygate (PostgreSQL).
    pub fn share(&self) -> TestDb {
        TestDb::Shared { url: self.url() }
    }

    /// The address of the PostgreSQL server this database is on.
    pub async fn server_addr(&self) -> std::net::SocketAddr {
        let url = self.url();
        let host = url
            .split('@')
            .nth(1)
            .unwrap_or(&url)
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        tokio::net::lookup_host(host).await.unwrap().next().unwrap()
    }

    pub fn url(&self) -> String {
        match self {
            TestDb::Through { url, .. } | TestDb::Shared { url } => url.clone(),
            TestDb::Sqlite { dir } => {
                format!("sqlite://{}", dir.path().join("keygate.db").display())
            }
            TestDb::Postgres { admin_url, name } => {
                let base = admin_url
                    .rsplit_once('/')
                    .map_or(admin_url.as_str(), |(b, _)| b);
                format!("{base}/{name}")
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { admin_url, name } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Dropping needs a runtime of its own: Drop may run inside or outside one.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    use sqlx::Connection;
                    let mut conn = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await
                        .ok()
                })
            })
            .join();
        }
    }
}

/// The Redis server of `KEYGATE_TEST_REDIS_URL` and a key prefix of the test's own, or `None`
/// (the test then reports itself skipped) when it is unset.
pub fn test_redis() -> Option<(String, String)> {
    let Some(url) = std::env::var("KEYGATE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("skipped: KEYGATE_TEST_REDIS_URL is not set");
        return None;
    };
    Some((url, format!("kgtest-{}", uuid::Uuid::new_v4().simple())))
}
