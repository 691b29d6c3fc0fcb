//! A real OCI registry on loopback: CNCF Distribution (`docker-registry`, Debian's package of
//! distribution 2.8), started per test with its storage in a temp folder.
//!
//! The binary is `$CONCEPTS_TEST_REGISTRY` when set, else `docker-registry` on `PATH`
//! (`.ci/run` installs it), else Debian's package unpacked into the target folder. Without one
//! the tests fail, saying how to get it: a registry test that skipped itself would pass on
//! every machine that cannot run it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry; killed when dropped.
pub struct TestRegistry {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// The registry binary: `$CONCEPTS_TEST_REGISTRY`, else `docker-registry` on `PATH`, else one
/// unpacked from Debian's package into the target folder (`apt-get download`, which needs no
/// root), so `cargo test --workspace` works on a Debian machine that has only rustup's
/// toolchain, as it does for the wasm target.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CONCEPTS_TEST_REGISTRY") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("docker-registry"))
            .find(|p| p.is_file())
    });
    if let Some(path) = on_path {
        return path;
    }
    static UNPACKED: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    match UNPACKED.get_or_init(unpack_debian_package) {
        Ok(path) => path.clone(),
        Err(why) => panic!(
            "no OCI registry to test against ({why}): install Debian's `docker-registry` \
             package (CNCF Distribution 2.8; `apt-get install docker-registry`) or point \
             CONCEPTS_TEST_REGISTRY at a `registry` binary"
        ),
    }
}

/// `<target>/oci-registry/usr/bin/docker-registry`, unpacked from the `.deb` once; test
/// processes racing here each unpack into their own folder and rename it into place.
fn unpack_debian_package() -> Result<PathBuf, String> {
    // The test executable is `<target>/<profile>/deps/<name>`.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or("no target folder above the test executable")?;
    let root = target.join("oci-registry");
    let binary = root.join("usr/bin/docker-registry");
    if binary.is_file() {
        return Ok(binary);
    }
    let staging = target.join(format!("oci-registry.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| e.to_string())?;
    let download = Command::new("apt-get")
        .args(["download", "docker-registry"])
        .current_dir(&staging)
        .output()
        .map_err(|e| format!("running apt-get: {e}"))?;
    if !download.status.success() {
        return Err(format!(
            "`apt-get download docker-registry` failed: {}",
            String::from_utf8_lossy(&download.stderr).trim()
        ));
    }
    let deb = std::fs::read_dir(&staging)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download left no .deb")?;
    let unpacked = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&staging)
        .status()
        .map_err(|e| format!("running dpkg-deb: {e}"))?;
    if !unpacked.success() {
        return Err("dpkg-deb -x failed".into());
    }
    // Another process may have won the race; its copy is as good.
    if std::fs::rename(&staging, &root).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(format!("{} is missing after unpacking", binary.display()))
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The user of [`TestRegistry::start_with_login`].
pub const USER: &str = "tester";
/// Its password.
pub const PASSWORD: &str = "concepts-test-password";
/// [`PASSWORD`]'s bcrypt hash (cost 4), as `htpasswd -B` writes it.
const PASSWORD_BCRYPT: &str = "$2b$04$abcdefghijklmnopqrstuuWKWbllspHmCYFlr.S5yU4fpqEHvY0Em";

impl TestRegistry {
    /// Starts a registry open to anyone and waits until it answers `GET /v2/`.
    pub fn start() -> TestRegistry {
        TestRegistry::launch(false)
    }

    /// Starts a registry that wants [`USER`] / [`PASSWORD`] (HTTP basic authentication
    /// against an htpasswd file).
    pub fn start_with_login() -> TestRegistry {
        TestRegistry::launch(true)
    }

    fn launch(login: bool) -> TestRegistry {
        let dir = tempfile::tempdir().unwrap();
        let auth = if login {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{USER}:{PASSWORD_BCRYPT}\n")).unwrap();
            format!(
                "auth:\n  htpasswd:\n    realm: concepts-test\n    path: {}\n",
                htpasswd.display()
            )
        } else {
            String::new()
        };
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        // Its log (every 404 a test provokes is an `error` line) goes to a file, shown when it
        // fails to start.
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(binary())
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the OCI registry");
        let mut registry = TestRegistry { child, addr, dir };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.path().join("registry.log"));
                panic!("the OCI registry exited at start-up ({status}): {log:?}");
            }
            // 401 is a registry that wants a login, up and answering.
            if self
                .get("/v2/")
                .is_some_and(|(code, _)| code == 200 || code == 401)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the OCI registry did not answer in 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `host:port`, as a reference writes it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// One plain GET: the status code and body, or `None` when nothing answers.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            // Distribution answers 404 for an OCI manifest the client does not say it accepts.
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n\
             Connection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let code = response.split(' ').nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Some((code, body.to_string()))
    }

    /// Where the registry keeps the bytes of the blob `sha256:<hex>` (manifests are blobs
    /// too): what a test overwrites to play a tampered store.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's storage folder.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The folder the registry's config and storage live in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
