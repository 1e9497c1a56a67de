use super::*;
use lb_model::{BackendRule, Protocol};

fn rule(s: &str) -> BackendRule {
    s.parse().unwrap()
}

fn draft(name: &str, backend: &str) -> RouteDraft {
    RouteDraft {
        proxy_protocol: None,
        name: name.into(),
        service: "ssh".into(),
        protocol: Protocol::Tcp,
        backends: lb_model::Pool::one(backend.parse().unwrap()),
        port: None,
    }
}

fn alice() -> User {
    User {
        name: "alice".into(),
        backends: vec![rule("10.0.0.11"), rule("10.0.1.0/28:22")],
        max_routes: 2,
        admin: false,
        token_sha256: None,
        created: SystemTime::UNIX_EPOCH,
        from_config: false,
    }
}

#[test]
fn claims_are_confined_to_the_students_name_backends_and_quota() {
    let a = alice();
    assert_eq!(check_claim(&a, &draft("alice", "10.0.0.11:22"), 0), Ok(()));
    assert_eq!(check_claim(&a, &draft("alice", "10.0.1.2:22"), 1), Ok(()));
    let e = check_claim(&a, &draft("bob", "10.0.0.11:22"), 0).unwrap_err();
    assert_eq!(e.field(), "name");
    assert_eq!(e.status(), 403);
    let e = check_claim(&a, &draft("alice", "10.0.0.12:22"), 0).unwrap_err();
    assert_eq!(e.field(), "backend");
    assert!(e.to_string().contains("10.0.0.12:22"), "{e}");
    assert!(e.to_string().contains("10.0.1.0/28:22"), "{e}");
    let e = check_claim(&a, &draft("alice", "10.0.0.11:22"), 2).unwrap_err();
    assert!(e.to_string().contains("2 of 2"), "{e}");
    let admin = User {
        admin: true,
        ..alice()
    };
    assert_eq!(check_claim(&admin, &draft("bob", "10.9.9.9:1"), 99), Ok(()));
}

#[test]
fn tokens_authenticate_only_their_user_and_rotation_locks_the_old_one_out() {
    let mut users = Users::default();
    let now = SystemTime::UNIX_EPOCH;
    let ta = users.add("alice", vec![], 4, false, now).unwrap();
    let tb = users.add("bob", vec![], 4, false, now).unwrap();
    assert!(ta.starts_with("sg_alice_") && ta.len() == "sg_alice_".len() + 64);
    assert_ne!(ta, tb);
    assert_eq!(users.authenticate(&ta).unwrap().name, "alice");
    assert_eq!(users.authenticate(&tb).unwrap().name, "bob");
    // bob's secret under alice's name, a truncated or altered token, junk: all refused.
    let forged = format!("sg_alice_{}", &tb["sg_bob_".len()..]);
    assert_eq!(users.authenticate(&forged), Err(BadToken));
    assert_eq!(users.authenticate(&ta[..ta.len() - 1]), Err(BadToken));
    let mut flipped = ta.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
    assert_eq!(
        users.authenticate(std::str::from_utf8(&flipped).unwrap()),
        Err(BadToken)
    );
    assert_eq!(users.authenticate(""), Err(BadToken));
    assert_eq!(users.authenticate(&"x".repeat(10_000)), Err(BadToken));
    // A session's digest works only for its own account and only until rotation.
    let digest = token_sha256(&ta);
    assert_eq!(
        users.authenticate_digest("alice", &digest).unwrap().name,
        "alice"
    );
    assert_eq!(users.authenticate_digest("bob", &digest), Err(BadToken));
    let new = users.rotate("alice").unwrap();
    assert_eq!(users.authenticate(&ta), Err(BadToken));
    assert_eq!(users.authenticate_digest("alice", &digest), Err(BadToken));
    assert_eq!(users.authenticate(&new).unwrap().name, "alice");
    // Only the hash is kept.
    let stored = users.get("alice").unwrap().token_sha256.unwrap();
    assert_eq!(stored, token_sha256(&new));
    assert!(!format!("{:?}", users).contains(&new[9..]));
}

#[test]
fn account_operations_name_what_is_wrong() {
    let mut users = Users::default();
    let now = SystemTime::UNIX_EPOCH;
    users.add("alice", vec![], 4, false, now).unwrap();
    assert_eq!(
        users.add("alice", vec![], 4, false, now),
        Err(UserError::Exists("alice".into()))
    );
    assert!(matches!(
        users.add("Alice!", vec![], 4, false, now),
        Err(UserError::Name(_))
    ));
    assert!(matches!(
        users.add("carol", vec![], 5000, false, now),
        Err(UserError::Quota(5000))
    ));
    assert_eq!(
        users.rotate("nobody"),
        Err(UserError::NoSuchUser("nobody".into()))
    );
    assert!(users.remove("alice").is_ok());
    assert!(users.get("alice").is_none());
}

#[test]
fn cooldowns_keep_a_port_out_until_they_end() {
    let mut users = Users::default();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let day = Duration::from_secs(86400);
    users.cool(30001, t0, day);
    assert!(users.is_cooling(30001, t0));
    assert!(users.is_cooling(30001, t0 + day - Duration::from_secs(1)));
    assert!(!users.is_cooling(30001, t0 + day));
    assert!(!users.is_cooling(30002, t0));
    // A later release extends, an earlier one never shortens.
    users.cool(30001, t0 + day / 2, day);
    assert!(users.is_cooling(30001, t0 + day));
    users.cool(30001, t0, Duration::from_secs(1));
    assert!(users.is_cooling(30001, t0 + day));
    assert!(!users.expire_cooldowns(t0));
    assert!(users.expire_cooldowns(t0 + 2 * day));
    assert!(users.cooldown().is_empty());
    users.cool(30005, t0, Duration::ZERO);
    assert!(!users.is_cooling(30005, t0));
}

#[test]
fn config_users_are_added_updated_and_removed_by_the_file_keeping_tokens() {
    use lb_model::ConfigUser;
    let now = SystemTime::UNIX_EPOCH;
    let mut users = Users::default();
    let runtime_token = users.add("bob", vec![], 4, false, now).unwrap();
    let declared = vec![ConfigUser {
        name: "alice".into(),
        backends: vec![rule("10.0.0.11")],
        max_routes: 2,
        admin: false,
    }];
    assert_eq!(
        users.apply_config(&declared, ConfigRemoval::Undeclared, now),
        (vec!["alice".to_string()], vec![], vec![])
    );
    let a = users.get("alice").unwrap();
    assert!(a.from_config && a.token_sha256.is_none());
    // No token yet: nothing authenticates as alice.
    let token = users.rotate("alice").unwrap();
    assert_eq!(users.authenticate(&token).unwrap().name, "alice");
    let more = vec![ConfigUser {
        max_routes: 3,
        ..declared[0].clone()
    }];
    assert_eq!(
        users.apply_config(&more, ConfigRemoval::Undeclared, now),
        (vec![], vec!["alice".to_string()], vec![])
    );
    assert_eq!(users.get("alice").unwrap().max_routes, 3);
    assert_eq!(
        users.authenticate(&token).unwrap().name,
        "alice",
        "token kept"
    );
    // Dropped from the file: gone. A runtime account is never the file's to remove.
    assert_eq!(
        users.apply_config(&[], ConfigRemoval::Undeclared, now),
        (vec![], vec![], vec!["alice".to_string()])
    );
    assert!(users.get("alice").is_none());
    assert_eq!(users.authenticate(&runtime_token).unwrap().name, "bob");
}

/// Issue 24, item 9: gateways sharing accounts whose `[[user]]` lists differ (a rolling
/// reload). A gateway removes only what its own file dropped: the account another
/// gateway's file added, and the token issued for it, stay whatever this file says.
#[test]
fn with_other_gateways_only_what_this_file_dropped_is_removed() {
    use lb_model::ConfigUser;
    let now = SystemTime::UNIX_EPOCH;
    let user = |name: &str| ConfigUser {
        name: name.into(),
        backends: vec![rule("10.0.0.11")],
        max_routes: 2,
        admin: false,
    };
    // gw1's new file added carol, and the admin issued her a token.
    let mut shared = Users::default();
    shared.apply_config(
        &[user("alice"), user("carol")],
        ConfigRemoval::Undeclared,
        now,
    );
    let carol = shared.rotate("carol").unwrap();
    // gw2 still runs the old file (alice only) and takes the shared accounts: carol stays,
    // with her token.
    let mut at_gw2 = shared.clone();
    assert_eq!(
        at_gw2.apply_config(&[user("alice")], ConfigRemoval::DroppedFrom(&[]), now),
        (vec![], vec![], vec![])
    );
    assert_eq!(at_gw2.authenticate(&carol).unwrap().name, "carol");
    // gw2's own reload that drops alice removes alice, and only her.
    assert_eq!(
        at_gw2.apply_config(&[], ConfigRemoval::DroppedFrom(&[user("alice")]), now),
        (vec![], vec![], vec!["alice".to_string()])
    );
    assert_eq!(at_gw2.authenticate(&carol).unwrap().name, "carol");
    // Alone, the file is the whole truth (as before).
    let mut alone = shared.clone();
    alone.apply_config(&[user("alice")], ConfigRemoval::Undeclared, now);
    assert!(alone.get("carol").is_none());
}

#[test]
fn every_member_of_a_claimed_pool_must_be_the_students() {
    let mut d = draft("alice", "10.0.0.11:80");
    d.backends = lb_model::Pool::parse(&["10.0.0.11:80", "10.0.1.3:22", "10.0.0.12:80"]).unwrap();
    match check_claim(&alice(), &d, 0) {
        Err(Denied::NotYourBackend { backend, .. }) => {
            assert_eq!(backend, "10.0.0.12:80".parse().unwrap())
        }
        other => panic!("{other:?}"),
    }
    d.backends = lb_model::Pool::parse(&["10.0.0.11:80", "10.0.1.3:22 weight=4"]).unwrap();
    assert_eq!(check_claim(&alice(), &d, 0), Ok(()));
}
