//! Push and pull against a real registry (CNCF Distribution on loopback): round trips, the
//! digests checked end to end, and the errors a user sees.

use concepts_oci::{Client, ClientOptions, ConceptRef, OciError};
use concepts_tests::oci_registry::{free_port, TestRegistry};

fn package(name: &str, seed: u64) -> Vec<u8> {
    let fp = concepts_runtime::fingerprint(&concepts_tests::e2e::parity_model()).unwrap();
    concepts_runtime::testing::random_concept_package(name, &fp, 3, seed, 1.0)
        .unwrap()
        .to_bytes()
}

fn client() -> Client {
    Client::new(ClientOptions::default())
}

#[test]
fn a_pushed_package_pulls_back_byte_for_byte_by_tag_and_by_digest() {
    let registry = TestRegistry::start();
    let bytes = package("bo", 1);
    let reference =
        ConceptRef::parse(&format!("oci://{}/household/concepts:bo", registry.host())).unwrap();
    let pushed = client().push(&bytes, &reference).unwrap();
    assert_eq!(pushed.size, bytes.len() as u64);
    assert_eq!(
        pushed.package_digest,
        format!("sha256:{}", concepts_fs::sha256_hex(&bytes))
    );

    let by_tag = client().pull(&reference).unwrap();
    assert_eq!(by_tag.bytes, bytes);
    assert_eq!(by_tag.package.manifest().name, "bo");
    assert_eq!(
        by_tag.pinned.digest(),
        Some(pushed.manifest_digest.as_str())
    );
    let by_digest = client().pull(&by_tag.pinned).unwrap();
    assert_eq!(by_digest.bytes, bytes);

    // The manifest depends on the package only: pushing it again, anywhere, gives the same
    // digest, and the registry serves our bytes under it.
    let elsewhere = ConceptRef::parse(&format!("{}/mirror/concepts:bo", registry.host())).unwrap();
    assert_eq!(
        client().push(&bytes, &elsewhere).unwrap().manifest_digest,
        pushed.manifest_digest
    );
    let (code, manifest) = registry
        .get(&format!(
            "/v2/household/concepts/manifests/{}",
            pushed.manifest_digest
        ))
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        manifest.contains(concepts_oci::artifact::ARTIFACT_TYPE),
        "{manifest}"
    );

    // Another concept under another tag of the same repository.
    let kiki = package("kiki", 2);
    let kiki_ref =
        ConceptRef::parse_or_tag(&format!("{}/household/concepts", registry.host()), "kiki")
            .unwrap();
    client().push(&kiki, &kiki_ref).unwrap();
    assert_eq!(client().pull(&kiki_ref).unwrap().bytes, kiki);
    assert_eq!(client().pull(&reference).unwrap().bytes, bytes);
}

#[test]
fn a_tampered_blob_or_manifest_and_a_wrong_digest_are_refused() {
    let registry = TestRegistry::start();
    let bytes = package("bo", 3);
    let reference =
        ConceptRef::parse(&format!("{}/household/concepts:bo", registry.host())).unwrap();
    let pushed = client().push(&bytes, &reference).unwrap();

    // A digest nobody pushed.
    let unknown = reference.pinned(&format!("sha256:{}", "0".repeat(64)));
    match client().pull(&unknown) {
        Err(OciError::NotFound { reference, .. }) => assert!(reference.contains("sha256:000")),
        other => panic!("{other:?}"),
    }
    // A tag nobody pushed.
    let missing =
        ConceptRef::parse(&format!("{}/household/concepts:tom", registry.host())).unwrap();
    let err = client().pull(&missing).unwrap_err();
    assert!(matches!(err, OciError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("household/concepts:tom"), "{err}");

    // The stored package altered in place (same length): the registry serves it, we refuse it.
    let blob = registry.blob_file(&pushed.package_digest);
    let mut stored = std::fs::read(&blob).unwrap();
    let last = stored.len() - 1;
    stored[last] ^= 0x55;
    std::fs::write(&blob, &stored).unwrap();
    let err = client().pull(&reference).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&pushed.package_digest) && message.contains("refused"),
        "{message}"
    );

    // A stored manifest altered (a pinned pull hashes what it got).
    std::fs::write(&blob, &bytes).unwrap();
    client().pull(&reference).unwrap();
    let manifest_file = registry.blob_file(&pushed.manifest_digest);
    let manifest = std::fs::read_to_string(&manifest_file).unwrap();
    std::fs::write(&manifest_file, manifest.replace("\"bo\"", "\"xx\"")).unwrap();
    let err = client()
        .pull(&reference.pinned(&pushed.manifest_digest))
        .unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err:?}");
}

#[test]
fn what_is_not_a_concept_package_is_not_pushed() {
    let registry = TestRegistry::start();
    let reference =
        ConceptRef::parse(&format!("{}/household/concepts:bo", registry.host())).unwrap();
    let err = client().push(b"not a package", &reference).unwrap_err();
    assert!(matches!(err, OciError::Package { .. }), "{err:?}");
    assert_eq!(
        registry.get("/v2/household/concepts/tags/list").unwrap().0,
        404,
        "nothing reached the registry"
    );
    // A reference pinned to another digest than the package's manifest is refused before upload.
    let pinned = reference.pinned(&format!("sha256:{}", "1".repeat(64)));
    let err = client().push(&package("bo", 4), &pinned).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err:?}");
}

#[test]
fn an_unreachable_registry_fails_with_its_address() {
    // A loopback port with nothing listening: refused at once.
    let host = format!("127.0.0.1:{}", free_port());
    let reference = ConceptRef::parse(&format!("{host}/household/concepts:bo")).unwrap();
    for err in [
        client().pull(&reference).unwrap_err(),
        client().push(&package("bo", 5), &reference).unwrap_err(),
    ] {
        assert!(matches!(err, OciError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains(&host), "{err}");
    }
}

#[test]
fn a_registry_that_wants_a_login_gets_the_credentials_given() {
    use concepts_oci::Credentials;
    use concepts_tests::oci_registry::{PASSWORD, USER};
    let registry = TestRegistry::start_with_login();
    let bytes = package("bo", 6);
    let reference =
        ConceptRef::parse(&format!("{}/household/concepts:bo", registry.host())).unwrap();
    let with = |credentials| {
        Client::new(ClientOptions {
            credentials,
            ..ClientOptions::default()
        })
    };

    let err = client().push(&bytes, &reference).unwrap_err();
    assert!(matches!(err, OciError::Denied { .. }), "{err:?}");
    assert!(
        err.to_string().contains("CONCEPTS_REGISTRY_USERNAME"),
        "{err}"
    );
    let wrong = with(Credentials::Basic {
        username: USER.into(),
        password: "wrong".into(),
    });
    let err = wrong.push(&bytes, &reference).unwrap_err();
    assert!(matches!(err, OciError::Denied { .. }), "{err:?}");

    let right = with(Credentials::Basic {
        username: USER.into(),
        password: PASSWORD.into(),
    });
    right.push(&bytes, &reference).unwrap();
    assert_eq!(right.pull(&reference).unwrap().bytes, bytes);
    assert!(matches!(
        client().pull(&reference),
        Err(OciError::Denied { .. })
    ));
}
