//! Real databases for the apps store tests: Postgres 15 (`initdb`/`pg_ctl`) and MariaDB
//! (`mariadb-install-db`/`mariadbd`), each started on a free port in a temporary directory,
//! reached with their own command-line clients (`psql`, `mariadb`), killed on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, tempdir};

/// The database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Postgres,
    MariaDb,
}

impl Driver {
    /// The `[apps_store] driver` value.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Postgres => "postgres",
            Driver::MariaDb => "mysql",
        }
    }
}

pub struct Db {
    pub driver: Driver,
    pub port: u16,
    /// MariaDB's server process (Postgres's postmaster daemonizes: its pid is in its pid file).
    child: Option<Child>,
    /// Whether this test's server is running (so only it is ever stopped or killed).
    running: bool,
    data: PathBuf,
    dir: tempdir::Dir,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A Postgres tool, run as the `postgres` user when the tests run as root (Postgres refuses
/// to run as root).
fn pg_tool(tool: &str) -> Command {
    let path = format!("{PG_BIN}/{tool}");
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut c: Command, what: &str) -> String {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Db {
    pub async fn start(driver: Driver) -> Db {
        let dir = tempdir::Dir::new();
        let data = dir.0.join("data");
        let port = free_port();
        let mut db = Db {
            driver,
            port,
            child: None,
            running: false,
            data,
            dir,
        };
        match driver {
            Driver::Postgres => db.init_postgres(),
            Driver::MariaDb => db.init_mariadb(),
        }
        db.launch().await;
        db.sql_on("", "CREATE DATABASE herald");
        db
    }

    fn init_postgres(&self) {
        std::fs::create_dir_all(&self.data).unwrap();
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["postgres:postgres", self.data.to_str().unwrap()]);
                    c
                },
                "chown",
            );
        }
        let mut c = pg_tool("initdb");
        c.args(["-D", self.data.to_str().unwrap()]).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(c, "initdb");
    }

    fn init_mariadb(&self) {
        let mut c = Command::new("mariadb-install-db");
        c.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data.display()))
            .args(["--user=root", "--skip-test-db", "--skip-name-resolve"])
            .arg("--auth-root-authentication-method=normal");
        run(c, "mariadb-install-db (apt-get install mariadb-server)");
    }

    /// Starts the server on its data directory and waits until it answers.
    async fn launch(&mut self) {
        match self.driver {
            Driver::Postgres => {
                // A killed postmaster's backends may still hold its shared memory for a moment.
                for attempt in 0.. {
                    let mut c = pg_tool("pg_ctl");
                    c.args(["-D", self.data.to_str().unwrap(), "-w", "-t", "30"])
                        .args(["-l", self.data.join("server.log").to_str().unwrap()])
                        .arg("-o")
                        .arg(format!(
                            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                             -c shared_preload_libraries=pg_stat_statements",
                            self.port,
                            self.data.display()
                        ))
                        .arg("start")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null());
                    if c.status().is_ok_and(|s| s.success()) {
                        break;
                    }
                    assert!(attempt < 50, "postgres did not start: {}", self.log());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Driver::MariaDb => {
                let child = Command::new("mariadbd")
                    .arg("--no-defaults")
                    .arg(format!("--datadir={}", self.data.display()))
                    .arg(format!("--port={}", self.port))
                    .arg("--bind-address=127.0.0.1")
                    .arg(format!("--socket={}", self.dir.0.join("sock").display()))
                    .arg(format!("--pid-file={}", self.dir.0.join("pid").display()))
                    .arg(format!(
                        "--log-error={}",
                        self.dir.0.join("err.log").display()
                    ))
                    .args(["--user=root", "--skip-grant-tables", "--skip-log-bin"])
                    .args(["--innodb-buffer-pool-size=16M", "--skip-name-resolve"])
                    .arg("--log-output=TABLE")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("mariadbd starts");
                self.child = Some(child);
            }
        }
        self.running = true;
        for _ in 0..300 {
            if self.try_sql("", "SELECT 1").as_deref() == Some("1") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{:?} did not answer: {}", self.driver, self.log());
    }

    fn log(&self) -> String {
        let file = match self.driver {
            Driver::Postgres => self.data.join("server.log"),
            Driver::MariaDb => self.dir.0.join("err.log"),
        };
        std::fs::read_to_string(file).unwrap_or_default()
    }

    /// The URL Herald gets (through `port`, e.g. a proxy's, when given).
    pub fn url_via(&self, port: u16) -> String {
        match self.driver {
            Driver::Postgres => format!("postgres://postgres@127.0.0.1:{port}/herald"),
            Driver::MariaDb => format!("mysql://root@127.0.0.1:{port}/herald"),
        }
    }

    pub fn url(&self) -> String {
        self.url_via(self.port)
    }

    fn client(&self, database: &str, sql: &str) -> Command {
        match self.driver {
            Driver::Postgres => {
                let mut c = Command::new("psql");
                c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                    .args(["-U", "postgres", "-At", "-v", "ON_ERROR_STOP=1"])
                    .args([
                        "-d",
                        if database.is_empty() {
                            "postgres"
                        } else {
                            database
                        },
                    ])
                    .args(["-c", sql]);
                c
            }
            Driver::MariaDb => {
                let mut c = Command::new("mariadb");
                c.arg("--no-defaults")
                    .args(["-h", "127.0.0.1", "-P", &self.port.to_string()])
                    .args(["-u", "root", "-N", "-B"]);
                if !database.is_empty() {
                    c.arg(database);
                }
                c.args(["-e", sql]);
                c
            }
        }
    }

    fn try_sql(&self, database: &str, sql: &str) -> Option<String> {
        let out = self
            .client(database, sql)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn sql_on(&self, database: &str, sql: &str) -> String {
        run(self.client(database, sql), &format!("SQL {sql:?}"))
    }

    /// Runs SQL in the `herald` database; its output, one row a line.
    pub fn sql(&self, sql: &str) -> String {
        self.sql_on("herald", sql)
    }

    /// Starts counting statements (MariaDB: the general query log).
    pub fn count_statements(&self) {
        match self.driver {
            Driver::Postgres => {
                self.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
                self.sql("SELECT pg_stat_statements_reset()");
            }
            Driver::MariaDb => {
                self.sql("TRUNCATE mysql.general_log");
                self.sql("SET GLOBAL general_log = 1");
            }
        }
    }

    /// How many statements the database ran whose text contains `fragment` since
    /// [`Db::count_statements`] (the database's own count, not Herald's).
    pub fn statements_with(&self, fragment: &str) -> u64 {
        let count = match self.driver {
            Driver::Postgres => self.sql(&format!(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements \
                 WHERE query LIKE '%{fragment}%' AND query NOT LIKE '%pg_stat_statements%'"
            )),
            Driver::MariaDb => self.sql(&format!(
                "SELECT count(*) FROM mysql.general_log WHERE command_type = 'Execute' \
                 AND argument LIKE '%{fragment}%'"
            )),
        };
        count
            .parse()
            .unwrap_or_else(|_| panic!("a count, not {count:?}"))
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if !std::mem::replace(&mut self.running, false) {
            return;
        }
        let pid = match self.driver {
            // The pid file of the postmaster this test started, if that process still is one.
            Driver::Postgres => postmaster_pid(&self.data).filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("postgres"))
            }),
            Driver::MariaDb => self.child.as_ref().map(Child::id),
        };
        if let Some(pid) = pid {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        if let Some(pid) = pid {
            // Postgres: the backends follow their postmaster.
            for _ in 0..100 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the server again on its data (after [`Db::kill`]).
    pub async fn restart(&mut self) {
        self.launch().await;
    }
}

fn postmaster_pid(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

impl Drop for Db {
    fn drop(&mut self) {
        if self.driver == Driver::Postgres && self.running {
            // An orderly stop; a kill if it does not come.
            let mut c = pg_tool("pg_ctl");
            c.args([
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            if c.status().is_ok_and(|s| s.success()) {
                self.running = false;
            } else {
                self.kill();
            }
        } else {
            self.kill();
        }
    }
}
