//! The checkpoint store over the S3 protocol, against a real S3-protocol server (moto, started by
//! [`crate::support::s3`]): what a replica writes, another lists and reads byte for byte; and,
//! with moto checking signatures, a wrong secret fails loudly without showing the secret.

use bytes::Bytes;
use permit_stats::checkpoint::{Store, StoreError};

use crate::support::s3::{S3Server, unchecked_authorization};

/// Bytes that a text-mangling path would change: every byte value, twice, and a megabyte more.
fn body(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn put_list_get_delete_over_s3() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let location = s3.url("replicas/eu");
    let store = Store::open_with_options(&location, s3.env()).expect("open the S3 store");
    assert_eq!(store.location(), location);

    let topic = "opscom.permits.v1";
    let names = [
        format!("{topic}/00000000000000000200-0b.checkpoint"),
        format!("{topic}/00000000000000000010-0a.checkpoint"),
        format!("{topic}/00000000000000001000-0c.checkpoint"),
        format!("{topic}/sub/dir/x.tmp"),
        "other.topic/00000000000000000001-ff.checkpoint".to_owned(),
    ];
    let sizes = [512, 0, 1 << 20, 3, 7];
    for (i, (name, size)) in names.iter().zip(sizes).enumerate() {
        store.put(name, body(i as u8, size)).await.expect("put");
    }

    assert_eq!(
        store.list(topic).await.expect("list"),
        [
            format!("{topic}/00000000000000000010-0a.checkpoint"),
            format!("{topic}/00000000000000000200-0b.checkpoint"),
            format!("{topic}/00000000000000001000-0c.checkpoint"),
            format!("{topic}/sub/dir/x.tmp"),
        ],
        "sorted, relative to the store's prefix, this topic only"
    );
    assert_eq!(store.list("").await.expect("list all").len(), names.len());
    assert!(store.list("no.such.topic").await.expect("list").is_empty());

    for (i, (name, size)) in names.iter().zip(sizes).enumerate() {
        let read = store.get(name).await.expect("get");
        assert!(read == body(i as u8, size), "{name}: bytes differ");
    }

    // The object is where an operator looks for it: the bucket, the prefix, the name.
    let raw = reqwest::Client::new()
        .get(format!(
            "{}/{}/replicas/eu/{}",
            s3.endpoint(),
            s3.bucket(),
            names[0]
        ))
        .header("authorization", unchecked_authorization("s3"))
        .send()
        .await
        .expect("GET the object");
    assert!(raw.status().is_success(), "{raw:?}");
    assert!(raw.bytes().await.expect("body") == body(0, sizes[0]));

    // A second store on the same bucket and prefix (another replica) sees the same objects; one
    // on another prefix sees none of them.
    let replica = Store::open_with_options(&location, s3.env()).expect("open again");
    assert_eq!(
        replica.get(&names[2]).await.expect("get"),
        body(2, sizes[2])
    );
    let elsewhere = Store::open_with_options(&s3.url("replicas/us"), s3.env()).expect("open");
    assert!(elsewhere.list(topic).await.expect("list").is_empty());

    store.delete(&names[0]).await.expect("delete");
    store
        .delete(&names[0])
        .await
        .expect("deleting a missing object is not an error");
    assert!(!store.list(topic).await.expect("list").contains(&names[0]));
    match store.get(&names[0]).await {
        Err(StoreError::NotFound { location: l, name }) => {
            assert_eq!(
                (l.as_str(), name.as_str()),
                (location.as_str(), names[0].as_str())
            );
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_secret_fails_loudly_without_showing_it() {
    let Some(s3) = S3Server::start_checking_signatures().await else {
        return;
    };
    let location = s3.url("checkpoints");
    let good = Store::open_with_options(&location, s3.env()).expect("open");
    good.put("t/a.checkpoint", Bytes::from_static(b"x"))
        .await
        .expect("the right secret works");

    let wrong_secret = format!("{}WRONG", s3.secret_key());
    let env = s3.env().into_iter().map(|(k, v)| {
        let v = if k == "AWS_SECRET_ACCESS_KEY" {
            wrong_secret.clone()
        } else {
            v
        };
        (k, v)
    });
    let bad = Store::open_with_options(&location, env).expect("opens: nothing is checked yet");
    let errors = [
        bad.put("t/b.checkpoint", Bytes::from_static(b"y"))
            .await
            .expect_err("put with a wrong secret"),
        bad.get("t/a.checkpoint")
            .await
            .expect_err("get with a wrong secret"),
        bad.list("t").await.expect_err("list with a wrong secret"),
        bad.delete("t/a.checkpoint")
            .await
            .expect_err("delete with a wrong secret"),
    ];
    for error in errors {
        let message = error.to_string();
        let debug = format!("{error:?}");
        assert!(
            matches!(error, StoreError::Failed { .. }),
            "not a NotFound or a silent success: {debug}"
        );
        assert!(message.contains(&location), "names the store: {message}");
        // The reason is S3's: a signature that does not match (403).
        assert!(
            message.contains("403") || message.contains("SignatureDoesNotMatch"),
            "says why: {message}"
        );
        for shown in [&message, &debug] {
            assert!(
                !shown.contains(s3.secret_key()),
                "the secret leaked: {shown}"
            );
        }
    }
    // Nothing was written or deleted with the wrong secret. (No `list`: moto refuses every
    // signed LIST, see support/s3.rs; the lenient server of the test above checks it.)
    assert_eq!(good.get("t/a.checkpoint").await.expect("still there"), "x");
    assert!(matches!(
        good.get("t/b.checkpoint").await,
        Err(StoreError::NotFound { .. })
    ));
}
