//! Credentials, from where container tools keep them.

use oci_client::secrets::RegistryAuth;

use crate::error::OciError;

/// Where [`crate::Client`] finds credentials for a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// None: anonymous access.
    Anonymous,
    /// One user name and password for every registry.
    Basic { username: String, password: String },
    /// The docker config (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`):
    /// `auths` entries and credential helpers, as `docker login` leaves them. Registries it
    /// has nothing for are accessed anonymously.
    DockerConfig,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::DockerConfig => f.write_str("DockerConfig"),
        }
    }
}

impl Credentials {
    /// A user name and password when both are given, the docker config when neither is
    /// (`concepts` passes `CONCEPTS_REGISTRY_USERNAME` and `CONCEPTS_REGISTRY_PASSWORD`).
    pub fn from_pair(
        username: Option<String>,
        password: Option<String>,
    ) -> Result<Credentials, OciError> {
        match (username, password) {
            (Some(username), Some(password)) => Ok(Credentials::Basic { username, password }),
            (None, None) => Ok(Credentials::DockerConfig),
            (Some(_), None) | (None, Some(_)) => Err(OciError::Credentials {
                registry: "every registry".into(),
                detail: "a user name needs a password, and a password a user name".into(),
            }),
        }
    }

    pub(crate) fn for_registry(&self, registry: &str) -> Result<RegistryAuth, OciError> {
        match self {
            Credentials::Anonymous => Ok(RegistryAuth::Anonymous),
            Credentials::Basic { username, password } => {
                Ok(RegistryAuth::Basic(username.clone(), password.clone()))
            }
            Credentials::DockerConfig => docker_config(registry),
        }
    }
}

fn docker_config(registry: &str) -> Result<RegistryAuth, OciError> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    match docker_credential::get_credential(registry) {
        Ok(DockerCredential::UsernamePassword(user, password)) => {
            Ok(RegistryAuth::Basic(user, password))
        }
        Ok(DockerCredential::IdentityToken(_)) => Err(OciError::Credentials {
            registry: registry.into(),
            detail: "the docker config holds an identity token, which concepts cannot exchange; \
                     set CONCEPTS_REGISTRY_USERNAME and CONCEPTS_REGISTRY_PASSWORD instead"
                .into(),
        }),
        // `ConfigReadError` is the config file failing to open: no `docker login` ever ran.
        Err(E::NoCredentialConfigured | E::ConfigNotFound | E::ConfigReadError) => {
            Ok(RegistryAuth::Anonymous)
        }
        Err(e) => Err(OciError::Credentials {
            registry: registry.into(),
            detail: format!("reading the docker config: {e:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auths_are_read_and_absent_entries_are_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        // "user:secret" in base64, as `docker login` writes it.
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths": {"registry.lan:5000": {"auth": "dXNlcjpzZWNyZXQ="}}}"#,
        )
        .unwrap();
        // The only test of this crate that touches the environment (docker_credential reads it).
        std::env::set_var("DOCKER_CONFIG", dir.path());
        let found = docker_config("registry.lan:5000").unwrap();
        let other = docker_config("elsewhere.lan").unwrap();
        std::env::set_var("DOCKER_CONFIG", dir.path().join("absent"));
        let no_config = docker_config("registry.lan:5000").unwrap();
        std::env::remove_var("DOCKER_CONFIG");
        assert!(matches!(no_config, RegistryAuth::Anonymous));
        assert!(matches!(found, RegistryAuth::Basic(u, p) if u == "user" && p == "secret"));
        assert!(matches!(other, RegistryAuth::Anonymous));
        let shown = format!(
            "{:?}",
            Credentials::Basic {
                username: "u".into(),
                password: "hunter2".into()
            }
        );
        assert!(!shown.contains("hunter2"));
        assert!(Credentials::from_pair(Some("u".into()), None).is_err());
        assert_eq!(
            Credentials::from_pair(None, None).unwrap(),
            Credentials::DockerConfig
        );
    }
}
