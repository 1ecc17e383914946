//! The password and ACL files, and authentication against them.

use base64::Engine as _;

use super::*;

/// Written by `mosquitto_passwd -c -b pw device-1 's3cret!'` (Mosquitto 2.0.11).
const PBKDF2: &str = "device-1:$7$101$PrIaRqhVTK63cBVC$9Fcb2QxPS7YBUzxAn1Bfo2VOvoSoMkh6XAztfRB6wQPVGvi5KbPnDV7WUeGMMmPYxYbBR3SOb/fBRfPx5D6ffg==";

#[test]
fn mosquitto_passwd_hashes_verify() {
    let file = PasswordFile::parse(&format!("# devices\n{PBKDF2}\n\n")).unwrap();
    assert_eq!(file.len(), 1);
    assert!(file.verify("device-1", b"s3cret!"));
    assert!(!file.verify("device-1", b"s3cret"));
    assert!(!file.verify("device-2", b"s3cret!"));

    // $6$: base64(SHA-512(password || salt)), with the salt's bytes base64 too.
    let b64 = base64::engine::general_purpose::STANDARD;
    let salt = b"0123456789ab";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
    ctx.update(b"pw");
    ctx.update(salt);
    let line = format!(
        "old:$6${}${}",
        b64.encode(salt),
        b64.encode(ctx.finish().as_ref())
    );
    let file = PasswordFile::parse(&line).unwrap();
    assert!(file.verify("old", b"pw"));
    assert!(!file.verify("old", b"pW"));
}

#[test]
fn bad_password_files_name_the_line_and_not_the_secret() {
    for (text, want) in [
        ("alice:plaintext", "line 1: not a mosquitto_passwd hash"),
        ("\nnocolon", "line 2: expected user:hash"),
        (":$6$YQ==$YQ==", "line 1: empty username"),
        ("a:$7$x$YQ==$YQ==", "line 1: the iteration count"),
        ("a:$6$!!$YQ==", "line 1: the hash is not base64"),
        (
            "a:$6$YQ==$YQ==\na:$6$YQ==$YQ==",
            "line 2: this user is listed twice",
        ),
    ] {
        let err = PasswordFile::parse(text).unwrap_err().to_string();
        assert!(err.starts_with(want), "{text:?}: {err}");
        assert!(!err.contains("plaintext"), "{err}");
    }
}

#[test]
fn authentication_follows_the_password_file_and_the_anonymous_setting() {
    let passwords = Some(PasswordFile::parse(PBKDF2).unwrap());
    let strict = Access {
        passwords: passwords.clone(),
        acl: None,
        allow_anonymous: false,
    };
    assert_eq!(
        strict.authenticate(Some("device-1"), Some(b"s3cret!"), strict.allow_anonymous),
        Ok(Some("device-1".to_owned()))
    );
    assert_eq!(
        strict.authenticate(Some("device-1"), Some(b"nope"), strict.allow_anonymous),
        Err(Denied::BadCredentials)
    );
    assert_eq!(
        strict.authenticate(Some("device-1"), None, strict.allow_anonymous),
        Err(Denied::BadCredentials)
    );
    assert_eq!(
        strict.authenticate(None, None, strict.allow_anonymous),
        Err(Denied::Anonymous)
    );
    let open = Access {
        allow_anonymous: true,
        ..strict
    };
    assert_eq!(
        open.authenticate(None, None, open.allow_anonymous),
        Ok(None)
    );
    // A wrong password is refused even where anonymous clients are let in.
    assert_eq!(
        open.authenticate(Some("device-1"), Some(b"x"), open.allow_anonymous),
        Err(Denied::BadCredentials)
    );
    // Without a password file a username proves nothing: the client is anonymous.
    let none = Access {
        passwords: None,
        acl: None,
        allow_anonymous: true,
    };
    assert_eq!(
        none.authenticate(Some("root"), Some(b"x"), none.allow_anonymous),
        Ok(None)
    );
    let closed = Access {
        allow_anonymous: false,
        ..none
    };
    assert_eq!(
        closed.authenticate(Some("root"), Some(b"x"), closed.allow_anonymous),
        Err(Denied::Anonymous)
    );
}

const ACL: &str = "
# anonymous clients read the public topics
topic read public/#

user dash
topic read plant/#
topic deny plant/secret/#
topic readwrite dash/+

user admin
topic #

pattern write devices/%c/telemetry
pattern read devices/%c/commands
pattern readwrite users/%u/#
";

#[test]
fn acl_entries_grant_and_deny_as_mosquitto_does() {
    let acl = Acl::parse(ACL).unwrap();
    let (r, w, s) = (Want::Read, Want::Write, Want::Subscribe);
    // (username, client id, want, topic, allowed)
    for (user, client, want, topic, allowed) in [
        (None, "anon", r, "public/news", true),
        (None, "anon", w, "public/news", false),
        (None, "anon", s, "public/#", true),
        (None, "anon", s, "#", false),
        (None, "anon", r, "plant/1", false),
        (Some("dash"), "d", r, "plant/1/temp", true),
        (Some("dash"), "d", w, "plant/1/temp", false),
        (Some("dash"), "d", r, "plant/secret/key", false),
        (Some("dash"), "d", s, "plant/+/temp", true),
        (Some("dash"), "d", s, "plant/#", true),
        (Some("dash"), "d", s, "plant/secret/#", false),
        (Some("dash"), "d", w, "dash/x", true),
        (Some("dash"), "d", s, "dash/#", false),
        (Some("dash"), "d", r, "public/news", false),
        (Some("admin"), "a", w, "anything/at/all", true),
        (Some("admin"), "a", s, "#", true),
        // `#` does not reach `$` topics.
        (Some("admin"), "a", r, "$SYS/x", false),
        (Some("admin"), "a", s, "$SYS/#", false),
        (None, "dev-7", w, "devices/dev-7/telemetry", true),
        (None, "dev-7", w, "devices/dev-8/telemetry", false),
        (None, "dev-7", r, "devices/dev-7/telemetry", false),
        (None, "dev-7", s, "devices/dev-7/commands", true),
        (None, "dev-7", s, "devices/+/commands", false),
        // A client id with a wildcard in it does not widen a pattern.
        (None, "#", w, "devices/#/telemetry", false),
        (Some("dash"), "d", w, "users/dash/notes", true),
        (Some("dash"), "d", w, "users/admin/notes", false),
        // %u means nothing for an anonymous client.
        (None, "x", w, "users//notes", false),
        (Some("nobody"), "n", r, "public/news", false),
    ] {
        assert_eq!(
            acl.allows(user, client, want, topic),
            allowed,
            "{user:?} {client} {want:?} {topic}"
        );
    }
}

#[test]
fn bad_acl_files_name_the_line() {
    for (text, want) in [
        ("topic", "line 1: `topic` needs a topic"),
        ("pattern", "line 1: `pattern` needs a topic"),
        ("\nuser", "line 2: `user` needs a username"),
        ("topics read a", "line 1: unknown keyword 'topics'"),
        ("topic read a/#/b", "line 1: 'a/#/b'"),
    ] {
        let err = Acl::parse(text).unwrap_err().to_string();
        assert!(err.starts_with(want), "{text:?}: {err}");
    }
}
