//! Benchmark loader: fills etcd with `--mib` MiB (or `--count` keys) of values (`--value-size`
//! bytes each, `--txn-size` puts per txn, 1 = plain puts, `--parallel` requests in flight).
//! Keys are `/bench/<n>`.
//!
//! usage: etcd_fill --endpoint http://127.0.0.1:2379 --mib 600 [--value-size 4096] [--parallel 8]
//!        etcd_fill --endpoint ... --count 200000 --value-size 512 --txn-size 1 --parallel 64

use std::time::Instant;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// Half pseudo-random, half text: compressible roughly like real objects.
fn value(size: usize, x: &mut u64) -> Vec<u8> {
    (0..size)
        .map(|j| {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            if j % 2 == 0 {
                (*x & 0xff) as u8
            } else {
                b'a' + (j % 26) as u8
            }
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = arg("--endpoint", "http://127.0.0.1:2379");
    let mib: usize = arg("--mib", "600").parse()?;
    let size: usize = arg("--value-size", "4096").parse()?;
    let parallel: usize = arg("--parallel", "8").parse()?;
    let count: usize = arg("--count", "0").parse()?;
    let txn: usize = arg("--txn-size", "100").parse::<usize>()?.max(1);
    let total = if count > 0 {
        count
    } else {
        mib * 1024 * 1024 / size
    };
    let client = etcd_client::Client::connect([&endpoint], None).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..parallel {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut x: u64 = 0x9E3779B97F4A7C15 ^ w as u64;
            let mut i = w * txn;
            while i < total {
                if txn == 1 {
                    c.put(format!("/bench/{i:09}"), value(size, &mut x), None)
                        .await?;
                } else {
                    let ops = (i..(i + txn).min(total))
                        .map(|k| {
                            etcd_client::TxnOp::put(
                                format!("/bench/{k:09}"),
                                value(size, &mut x),
                                None,
                            )
                        })
                        .collect::<Vec<_>>();
                    c.txn(etcd_client::Txn::new().and_then(ops)).await?;
                }
                i += txn * parallel;
            }
            Ok::<(), etcd_client::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "put {total} keys of {size} bytes in {secs:.1}s ({:.0} puts/s)",
        total as f64 / secs
    );
    Ok(())
}
