//! Test and bench helper for the shared device program (the library's
//! `kernel::shared`), run as its own process so that tests can check that a
//! second process re-uses the pinned program and can SIGKILL it at a step:
//!
//! - `shared-attach attach PIN_ROOT CGROUP_DIR [RULE...]`: attaches the
//!   shared program with the rules (`c 1:3 rw`, ...) as the container's
//!   whole policy; prints `prog_id N`.
//! - `shared-attach detach PIN_ROOT CGROUP_DIR`: detaches it.
//! - `shared-attach bench PIN_ROOT PARENT_DIR N`: creates N child cgroups,
//!   attaches each with /dev/null's rule, then lists the attached ids; prints
//!   one JSON object (load, attach and list times, per-container storage
//!   bytes); detaches and removes everything again.

use std::path::Path;
use std::time::Instant;

use ctdev::cgroup::CgroupFs;
use ctdev::kernel::loader::ProgramObject;
use ctdev::kernel::pins::PinRoot;
use ctdev::kernel::shared::SharedProgram;

fn open(pin_root: &str) -> (PinRoot, SharedProgram) {
    let pins = PinRoot::new(pin_root);
    pins.prepare().expect("pin root");
    let object = ProgramObject::new(None).expect("embedded eBPF object");
    let shared = SharedProgram::open_or_load(&object, &pins).expect("shared program");
    (pins, shared)
}

fn table(id: u64, rules: &[String]) -> ctdev_common::SharedTable {
    let rules = ctdev::rule::parse_rules(rules).expect("rules");
    let entries = ctdev::plan::attach_entries(id, &[], &rules);
    SharedProgram::table_for(id, &entries, None).expect("table")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fs = CgroupFs::discover().expect("cgroup2");
    match args.first().map(String::as_str) {
        Some("attach") => {
            let (pins, shared) = open(&args[1]);
            let cg = fs.cgroup(Path::new(&args[2])).expect("cgroup");
            let link = shared
                .attach(&cg, &pins, &table(cg.id, &args[3..]))
                .expect("attach");
            println!("prog_id {}", link.prog_id);
        }
        Some("detach") => {
            let (pins, shared) = open(&args[1]);
            let cg = fs.cgroup(Path::new(&args[2])).expect("cgroup");
            shared.detach(&pins, cg.id).expect("detach");
        }
        Some("bench") => {
            let n: usize = args[3].parse().expect("count");
            let parent = Path::new(&args[2]);
            let t0 = Instant::now();
            let (pins, shared) = open(&args[1]);
            let load_ms = t0.elapsed().as_secs_f64() * 1e3;
            let mut cgs = Vec::with_capacity(n);
            for i in 0..n {
                let dir = parent.join(format!("c{i}"));
                std::fs::create_dir(&dir).expect("create cgroup");
                cgs.push(fs.cgroup(&dir).expect("cgroup"));
            }
            let rules = vec!["c 1:3 rw".to_string()];
            let t1 = Instant::now();
            for cg in &cgs {
                shared
                    .attach(cg, &pins, &table(cg.id, &rules))
                    .expect("attach");
            }
            let attach_s = t1.elapsed().as_secs_f64();
            let t2 = Instant::now();
            let ids = shared.attached().expect("list");
            let mut entries = 0;
            for (id, t) in &ids {
                entries += ctdev_common::table_items(&t.table, *id).count();
            }
            let list_ms = t2.elapsed().as_secs_f64() * 1e3;
            assert_eq!(ids.len(), n);
            assert_eq!(entries, n);
            let t3 = Instant::now();
            for cg in &cgs {
                shared.detach(&pins, cg.id).expect("detach");
            }
            let detach_s = t3.elapsed().as_secs_f64();
            for cg in &cgs {
                let _ = std::fs::remove_dir(&cg.dir);
            }
            println!(
                "{{\"containers\": {n}, \"load_ms\": {load_ms:.2}, \"attach_per_s\": {:.0}, \
                 \"list_ms\": {list_ms:.1}, \"detach_per_s\": {:.0}, \"storage_bytes\": {}, \
                 \"counters_bytes_per_cpu\": {}}}",
                n as f64 / attach_s,
                n as f64 / detach_s,
                std::mem::size_of::<ctdev_common::SharedTable>(),
                std::mem::size_of::<ctdev_common::ContainerCounters>(),
            );
        }
        _ => panic!("usage: shared-attach attach|detach|bench ..."),
    }
}
