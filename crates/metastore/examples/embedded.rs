//! A MetaStore member inside this program: started on an ephemeral port in a temporary
//! directory, then a write, a watch that sees it, a read, and a clean stop.
//!
//! `cargo run -p metastore --example embedded`; `cargo test -p metastore --example embedded`
//! runs it as a test.

// An example prints what it does; it waits with plain tokio, as a program embedding the store
// would (the workspace's own code bounds its waits through the deadline crate).
#![allow(clippy::print_stdout, clippy::disallowed_methods)]

use std::error::Error;
use std::time::Duration;

use metastore::etcd_client::EventType;
use metastore::Server;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let server = Server::builder()
        .name("embedded")
        .data_dir(dir.path().join("store"))
        .start()
        .await?;
    println!("serving etcd's API on {}", server.client_urls().join(","));

    let mut client = server.client().await?;
    let mut watch = client.watch("greeting", None).await?;
    client.put("greeting", "hello", None).await?;

    // The first answer confirms the watch; the put follows.
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(answer) = watch.message().await? {
            if let Some(event) = answer.events().first() {
                let value = event.kv().map(|kv| kv.value().to_vec());
                return Ok::<_, metastore::etcd_client::Error>(Some((event.event_type(), value)));
            }
        }
        Ok(None)
    })
    .await??;
    match seen {
        Some((EventType::Put, Some(value))) if value == b"hello" => {
            println!("watch saw: greeting = hello");
        }
        other => return Err(format!("the watch saw {other:?}, not the put").into()),
    }

    let got = client.get("greeting", None).await?;
    let value = got.kvs().first().map(|kv| kv.value().to_vec());
    if value.as_deref() != Some(b"hello".as_slice()) {
        return Err(format!("read {value:?}, not hello").into());
    }
    println!(
        "read back: greeting = hello at revision {}",
        got.header().map_or(0, |h| h.revision())
    );

    drop(watch);
    drop(client);
    server.shutdown().await?;
    println!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_runs() {
        super::main().unwrap();
    }
}
