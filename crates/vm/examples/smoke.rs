use apf_vm::config::VmConfig;
use apf_vm::{RunOptions, run_image, run_workloads};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut config = VmConfig::default();
    if args.get(1).map(String::as_str) == Some("off") {
        config.apf = false;
    }
    if args.get(1).map(String::as_str) == Some("image") {
        let image = std::fs::read(&args[2]).unwrap();
        let r = run_image(
            &config,
            &image,
            RunOptions {
                timeout: Duration::from_secs(10),
                echo_console: true,
            },
        )
        .unwrap();
        println!("{:?} {:?}", r.end, r.wall);
        return;
    }
    let r = run_workloads(
        &config,
        RunOptions {
            timeout: Duration::from_secs(60),
            echo_console: true,
        },
    )
    .unwrap();
    println!(
        "end {:?} wall {:?} work_done {:?}",
        r.end, r.wall, r.work_done_at
    );
    for v in &r.vcpus {
        println!("vcpu{} {:?}\n  apf {:?}", v.index, v.stats, v.apf);
    }
    for p in &r.processes {
        println!("{:?}", p);
    }
    println!("{:?}", r.mem.faults);
}
