//! The RingCentral doubles with the credentials a sidecar needs, and the flags of the JWT flow.

use std::path::PathBuf;

use token_sidecar_testkit::api::ApiServer;
use token_sidecar_testkit::token_server::{TokenServer, TokenServerConfig, DEV_ASSERTION};

use super::SidecarBuilder;

/// A token server, an API double and the credential files (client secret, JWT).
pub struct Rig {
    /// The token endpoint double.
    pub ts: TokenServer,
    /// The API double, accepting the token server's tokens.
    pub api: ApiServer,
    dir: tempfile::TempDir,
}

impl Rig {
    /// Starts both doubles.
    pub async fn new(cfg: TokenServerConfig) -> Rig {
        let ts = TokenServer::start(cfg).await.unwrap();
        let api = ApiServer::start(&ts).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "test-secret\n").unwrap();
        std::fs::write(dir.path().join("jwt"), DEV_ASSERTION).unwrap();
        Rig { ts, api, dir }
    }

    /// A file in the rig's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The token flags of the JWT flow against this rig.
    pub fn jwt_flags(&self) -> Vec<String> {
        vec![
            "--grant".into(),
            "jwt_bearer".into(),
            "--client-id".into(),
            "test-client".into(),
            "--token-url".into(),
            self.ts.token_url(),
            "--client-secret-file".into(),
            self.path("secret").display().to_string(),
            "--assertion-file".into(),
            self.path("jwt").display().to_string(),
        ]
    }

    /// `token-sidecar run` in front of the API with the JWT grant.
    pub fn sidecar(&self) -> SidecarBuilder {
        SidecarBuilder::new(&self.api.url()).args(self.jwt_flags())
    }

    /// Runs `token-sidecar refresh` with the JWT flow and `extra` flags, off the async runtime
    /// (the doubles run on it).
    pub async fn refresh_subcommand(&self, extra: &[&str]) -> super::sidecar::Output {
        let mut args = vec!["refresh".to_owned(), "--upstream".into(), self.api.url()];
        args.extend(self.jwt_flags());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        tokio::task::spawn_blocking(move || super::sidecar::run_once(args, &[]))
            .await
            .unwrap()
    }

    /// How many token requests had this grant and status.
    pub fn count(&self, grant: &str, status: u16) -> usize {
        self.ts
            .requests()
            .iter()
            .filter(|r| r.grant_type == grant && r.status == status)
            .count()
    }
}
