use super::*;

fn sha256(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// A clients directory like the package's: two builds and their sums.
fn dir_with(files: &[(&str, &[u8])], sums: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    std::fs::write(dir.path().join(SUMS_FILE), sums).unwrap();
    dir
}

#[test]
fn a_download_matches_the_sha256_the_index_shows() {
    let exe: &[u8] = b"MZ pretend windows build";
    let elf: &[u8] = b"\x7fELF pretend static linux build";
    let sums = format!(
        "{}  srvgate-client-windows-x86_64.exe\n{} *srvgate-client-linux-x86_64\n",
        sha256(exe),
        sha256(elf)
    );
    let dir = dir_with(
        &[
            ("srvgate-client-windows-x86_64.exe", exe),
            ("srvgate-client-linux-x86_64", elf),
        ],
        &sums,
    );
    let clients = Clients::load(dir.path());
    assert_eq!(clients.files.len(), 2);

    let index = clients.answer("GET", "/clients/");
    assert_eq!(index.status, 200);
    let page = String::from_utf8(index.body).unwrap();
    for (name, bytes) in [
        ("srvgate-client-windows-x86_64.exe", exe),
        ("srvgate-client-linux-x86_64", elf),
    ] {
        assert!(
            page.contains(&format!("href=\"/clients/{name}\"")),
            "{page}"
        );
        let got = clients.answer("GET", &format!("/clients/{name}"));
        assert_eq!(got.status, 200);
        assert_eq!(got.body, bytes);
        // What the page says is the download's hash.
        assert!(page.contains(&sha256(&got.body)), "{page}");
        assert!(got
            .headers
            .iter()
            .any(|(h, v)| *h == "Content-Disposition" && v.contains(name)));
    }
    let listed = clients.answer("GET", "/clients/SHA256SUMS");
    assert_eq!(
        String::from_utf8(listed.body).unwrap(),
        format!(
            "{}  srvgate-client-windows-x86_64.exe\n{}  srvgate-client-linux-x86_64\n",
            sha256(exe),
            sha256(elf)
        )
    );
}

#[test]
fn a_file_whose_hash_differs_is_not_offered() {
    let sums = format!("{}  srvgate-client-linux-x86_64\n", sha256(b"the build"));
    let dir = dir_with(&[("srvgate-client-linux-x86_64", b"tampered")], &sums);
    let clients = Clients::load(dir.path());
    assert!(clients.files.is_empty());
    assert_eq!(
        clients
            .answer("GET", "/clients/srvgate-client-linux-x86_64")
            .status,
        404
    );
}

#[test]
fn only_listed_plain_names_are_served() {
    let secret: &[u8] = b"not a client";
    // A line naming a path, one with a bad hash, a missing file: none is offered.
    let sums = format!(
        "{h}  ../secret\n{h}  sub/secret\nzz  secret\n{h}  missing\n",
        h = sha256(secret)
    );
    let dir = dir_with(&[("secret", secret)], &sums);
    let clients = Clients::load(dir.path());
    assert!(clients.files.is_empty(), "{clients:?}");
    for path in [
        "/clients/secret",
        "/clients/../secret",
        "/clients/SHA256SUMS/x",
    ] {
        assert_eq!(clients.answer("GET", path).status, 404, "{path}");
    }
    assert_eq!(clients.answer("POST", "/clients/").status, 405);
    assert!(Clients::owns("/clients/") && Clients::owns("/clients"));
    assert!(!Clients::owns("/clientsx") && !Clients::owns("/v1/me"));
}

#[test]
fn no_directory_offers_nothing_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let clients = Clients::load(&dir.path().join("absent"));
    assert!(clients.files.is_empty());
    let page = String::from_utf8(clients.answer("GET", "/clients/").body).unwrap();
    assert!(page.contains("No client builds are installed"), "{page}");
}

#[test]
fn the_bounds_hold() {
    let dir = tempfile::tempdir().unwrap();
    let big = vec![b'#'; (MAX_SUMS + 1) as usize];
    std::fs::write(dir.path().join(SUMS_FILE), big).unwrap();
    assert!(Clients::load(dir.path()).files.is_empty());

    let one: &[u8] = b"x";
    let sums: String = (0..MAX_FILES + 4)
        .map(|i| format!("{}  c{i}\n", sha256(one)))
        .collect();
    let names: Vec<String> = (0..MAX_FILES + 4).map(|i| format!("c{i}")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), one)).collect();
    let dir = dir_with(&files, &sums);
    assert_eq!(Clients::load(dir.path()).files.len(), MAX_FILES);
}
