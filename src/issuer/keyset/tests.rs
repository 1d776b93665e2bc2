//! The key set's manifest, rotation and directory, checked without a broker.
use super::*;
use time::macros::datetime;

const HOUR: Duration = Duration::from_secs(3600);

fn kid(n: u8) -> String {
    format!("{}{:02}", "k".repeat(41), n)
}

fn entry(n: u8, algorithm: SigningAlgorithm, state: KeyState) -> KeyEntry {
    KeyEntry {
        kid: kid(n),
        algorithm,
        state,
        created_at: datetime!(2026-11-01 00:00 UTC),
    }
}

fn states(manifest: &Manifest) -> Vec<(String, SigningAlgorithm, KeyState)> {
    manifest
        .keys
        .iter()
        .map(|k| (k.kid.clone(), k.algorithm, k.state))
        .collect()
}

use SigningAlgorithm::{Es256, Rs256};

#[test]
fn rotation_promotes_next_retires_current_and_prunes_expired_keys() {
    let now = datetime!(2026-11-29 12:00 UTC);
    let manifest = Manifest {
        keys: vec![
            entry(1, Es256, KeyState::Current),
            entry(2, Es256, KeyState::Next),
            entry(
                3,
                Es256,
                KeyState::Retiring {
                    retire_after: datetime!(2026-11-29 11:00 UTC),
                },
            ),
            entry(
                4,
                Es256,
                KeyState::Retiring {
                    retire_after: datetime!(2026-11-29 13:00 UTC),
                },
            ),
            entry(5, Rs256, KeyState::Current),
            entry(6, Rs256, KeyState::Next),
        ],
    };
    let rotated = rotate(
        &manifest,
        vec![entry(7, Es256, KeyState::Next)],
        now,
        24 * HOUR,
    )
    .unwrap();
    assert_eq!(
        states(&rotated.manifest),
        [
            (kid(2), Es256, KeyState::Current),
            (kid(7), Es256, KeyState::Next),
            (
                kid(4),
                Es256,
                KeyState::Retiring {
                    retire_after: datetime!(2026-11-29 13:00 UTC)
                }
            ),
            (
                kid(1),
                Es256,
                KeyState::Retiring {
                    retire_after: datetime!(2026-11-30 12:00 UTC)
                }
            ),
            (kid(5), Rs256, KeyState::Current),
            (kid(6), Rs256, KeyState::Next),
        ],
        "RS256 was not asked for and is untouched"
    );
    assert_eq!(
        rotated.pruned.iter().map(|k| &k.kid).collect::<Vec<_>>(),
        [&kid(3)]
    );

    // Rotating again an hour later: key 4 has expired, key 1 has not.
    let later = now + HOUR;
    let again = rotate(
        &rotated.manifest,
        vec![
            entry(8, Es256, KeyState::Next),
            entry(9, Rs256, KeyState::Next),
        ],
        later,
        24 * HOUR,
    )
    .unwrap();
    let current: Vec<_> = again
        .manifest
        .keys
        .iter()
        .filter(|k| k.state == KeyState::Current)
        .map(|k| (k.algorithm, k.kid.clone()))
        .collect();
    assert_eq!(current, [(Es256, kid(7)), (Rs256, kid(6))]);
    assert_eq!(
        again.pruned.iter().map(|k| &k.kid).collect::<Vec<_>>(),
        [&kid(4)]
    );
    let retiring: Vec<_> = again
        .manifest
        .keys
        .iter()
        .filter_map(|k| k.state.retire_after().map(|at| (k.kid.clone(), at)))
        .collect();
    assert_eq!(
        retiring,
        [
            (kid(1), datetime!(2026-11-30 12:00 UTC)),
            (kid(2), datetime!(2026-11-30 13:00 UTC)),
            (kid(5), datetime!(2026-11-30 13:00 UTC)),
        ]
    );
}

#[test]
fn rotation_needs_a_next_key_and_keys_of_the_algorithm() {
    let now = datetime!(2026-11-29 12:00 UTC);
    let only_current = Manifest {
        keys: vec![entry(1, Es256, KeyState::Current)],
    };
    assert!(matches!(
        rotate(
            &only_current,
            vec![entry(2, Es256, KeyState::Next)],
            now,
            HOUR
        ),
        Err(KeySetError::NoNextKey(Es256))
    ));
    assert!(matches!(
        rotate(
            &only_current,
            vec![entry(2, Rs256, KeyState::Next)],
            now,
            HOUR
        ),
        Err(KeySetError::NoKeys(Rs256))
    ));
}

#[test]
fn overlaps_cover_the_longest_token() {
    assert_eq!(choose_overlap(None, None).unwrap(), DEFAULT_OVERLAP);
    assert_eq!(
        choose_overlap(None, Some(12 * HOUR)).unwrap(),
        DEFAULT_OVERLAP
    );
    assert_eq!(choose_overlap(None, Some(30 * HOUR)).unwrap(), 31 * HOUR);
    assert_eq!(
        choose_overlap(Some(2 * HOUR), None).unwrap(),
        2 * HOUR,
        "an operator may choose less than the default"
    );
    let err = choose_overlap(Some(HOUR / 2), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("30m") && err.contains("(1h)") && err.contains("--config"),
        "{err}"
    );
    let err = choose_overlap(Some(6 * HOUR), Some(12 * HOUR))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("this configuration") && err.contains("(12h)"),
        "{err}"
    );
    assert!(choose_overlap(Some(12 * HOUR), Some(12 * HOUR)).is_ok());
}

#[test]
fn retiring_keys_are_published_until_retire_after() {
    let at = datetime!(2026-11-29 12:00 UTC);
    let state = KeyState::Retiring { retire_after: at };
    assert!(state.published_at(at - Duration::from_secs(1)));
    assert!(!state.published_at(at));
    assert!(KeyState::Next.published_at(at) && KeyState::Current.published_at(at));
}

#[test]
fn manifests_round_trip_and_bad_ones_are_refused() {
    let manifest = Manifest {
        keys: vec![
            entry(1, Es256, KeyState::Current),
            entry(2, Es256, KeyState::Next),
            entry(
                3,
                Es256,
                KeyState::Retiring {
                    retire_after: datetime!(2026-11-30 12:00:00.5 UTC),
                },
            ),
            entry(4, Rs256, KeyState::Current),
        ],
    };
    let text = manifest.to_json();
    assert!(
        text.contains("\"retire_after\": \"2026-11-30T12:00:00.5Z\""),
        "{text}"
    );
    assert_eq!(Manifest::parse(&text).unwrap(), manifest);

    let refused = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
        edit(&mut value);
        Manifest::parse(&value.to_string()).unwrap_err()
    };
    assert!(refused(&|v| v["keys"][1]["state"] = "current".into()).contains("2 current"));
    assert!(refused(&|v| {
        v["keys"][2].as_object_mut().unwrap().remove("retire_after");
    })
    .contains("needs retire_after"));
    assert!(refused(&|v| v["keys"][0]["kid"] = "../../etc/passwd".into()).contains("thumbprint"));
    assert!(refused(&|v| v["keys"][1]["kid"] = kid(1).into()).contains("twice"));
    assert!(refused(&|v| v["keys"][3]["algorithm"] = "HS256".into()).contains("HS256"));
    assert!(refused(&|v| v["version"] = 2.into()).contains("version 2"));
    assert!(refused(&|v| v["keys"][0]["extra"] = true.into()).contains("extra"));
}

#[test]
fn a_key_set_is_created_once_rotated_and_loaded_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path().join("keys"));
    let now = OffsetDateTime::now_utc();
    let imported_path = dir.path().join("legacy.pem");
    let legacy = SigningKey::generate(&imported_path).unwrap();
    let import = SigningKey::load_file(&imported_path, Es256).unwrap();
    let created = keys.create(Some(import), now).unwrap();
    assert_eq!(created.keys.len(), 4);
    assert!(created
        .keys
        .iter()
        .any(|k| k.kid == legacy.kid() && k.state == KeyState::Current));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(keys.path()), 0o700);
        for key in &created.keys {
            assert_eq!(mode(&keys.path().join(key.file_name())), 0o600);
        }
    }
    assert!(matches!(
        keys.create(None, now),
        Err(KeySetError::AlreadyExists { .. })
    ));

    let ring = keys.load(now).unwrap();
    assert_eq!(ring.current(Es256).unwrap().kid(), legacy.kid());
    assert_eq!(ring.algorithms(), [Es256, Rs256]);
    assert_eq!(ring.published(now).count(), 4);

    // The next key was published just now: clouds may not have it yet.
    let too_new = keys.rotate(Some(Rs256), 2 * HOUR, JWKS_CACHE_MAX_AGE, now);
    assert!(
        matches!(
            too_new,
            Err(KeySetError::NextTooNew {
                algorithm: Rs256,
                ..
            })
        ),
        "{too_new:?}"
    );
    assert_eq!(
        keys.read_manifest().unwrap().keys,
        created.keys,
        "nothing changed"
    );
    // Forced (`--force`), it goes ahead.
    let rotation = keys
        .rotate(Some(Rs256), 2 * HOUR, Duration::ZERO, now)
        .unwrap();
    assert_eq!(rotation.manifest.keys.len(), 5);
    assert_eq!(keys.read_manifest().unwrap(), rotation.manifest);
    let ring = keys.load(now).unwrap();
    let next_rs256 = created
        .keys
        .iter()
        .find(|k| k.algorithm == Rs256 && k.state == KeyState::Next)
        .unwrap();
    assert_eq!(ring.current(Rs256).unwrap().kid(), next_rs256.kid);
    assert_eq!(ring.current(Es256).unwrap().kid(), legacy.kid());

    // Two hours and a bit later the old RS256 key is no longer loaded, and
    // the next rotation prunes it and deletes its file.
    let later = now + 2 * HOUR + Duration::from_secs(1);
    assert_eq!(keys.load(later).unwrap().published(later).count(), 4);
    let rotation = keys
        .rotate(Some(Rs256), 2 * HOUR, JWKS_CACHE_MAX_AGE, later)
        .unwrap();
    assert_eq!(rotation.pruned.len(), 1);
    assert!(!keys.path().join(rotation.pruned[0].file_name()).exists());
    let leftovers = std::fs::read_dir(keys.path())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with('.') || name == LOCK
        })
        .count();
    assert_eq!(leftovers, 0, "no temporary or lock file is left behind");
}

#[test]
fn loading_refuses_open_swapped_and_missing_key_files() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path());
    let now = OffsetDateTime::now_utc();
    assert!(matches!(keys.load(now), Err(KeySetError::Missing { .. })));
    let manifest = keys.create(None, now).unwrap();
    let es256: Vec<_> = manifest
        .keys
        .iter()
        .filter(|k| k.algorithm == Es256)
        .collect();
    let first = keys.path().join(es256[0].file_name());

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = keys.load(now).err().unwrap();
        assert!(
            matches!(
                &err,
                KeySetError::KeyFile {
                    error: SigningKeyError::TooOpen { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // A key file replaced by another key is refused by its thumbprint.
    let second = keys.path().join(es256[1].file_name());
    std::fs::remove_file(&first).unwrap();
    std::fs::copy(&second, &first).unwrap();
    assert!(matches!(
        keys.load(now),
        Err(KeySetError::KidMismatch { .. })
    ));

    std::fs::remove_file(&first).unwrap();
    assert!(matches!(
        keys.load(now),
        Err(KeySetError::KeyFile {
            error: SigningKeyError::NotFound { .. },
            ..
        })
    ));
}

#[test]
fn a_held_lock_stops_a_second_change() {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyDir::new(dir.path());
    let now = OffsetDateTime::now_utc();
    keys.create(None, now).unwrap();
    let held = keys.lock().unwrap();
    let err = keys.rotate(None, HOUR, Duration::ZERO, now).err().unwrap();
    assert!(matches!(err, KeySetError::Locked { .. }), "{err}");
    drop(held);
    keys.rotate(None, HOUR, Duration::ZERO, now).unwrap();
}
