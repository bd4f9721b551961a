//! A million random and mutated frames through the real XDP program (and a share through the
//! TC egress program): every verdict is a pass, and the books balance: every frame is either
//! in exactly one flow or counted under exactly one reason, flow by flow and reason by reason
//! equal to what the agent's parser computes from the same frames.

use std::collections::HashMap;

use fastrand::Rng;
use sensor_agent::source::packet::parse_frame;
use sensor_common::{counter, FlowKey};
use sensor_tests::{
    frames::{self, Ext, Frag, TCP_ACK, TCP_SYN, TPID_8021AD, TPID_8021Q},
    kernel::{pin_to_cpu, tc_test_run_accepts, test_run_fd, Kernel},
};

const FRAMES: usize = 1_000_000;
const TC_FRAMES: usize = 100_000;
const SEED: u64 = 0xf022_2026;

fn templates() -> Vec<Vec<u8>> {
    let a4 = [198, 51, 100, 1];
    let b4 = [198, 51, 100, 2];
    let a6 = [0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let b6 = [0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let tcp = frames::tcp(
        50000,
        3333,
        TCP_SYN | TCP_ACK,
        b"{\"method\":\"mining.subscribe\"}",
    );
    let udp = frames::udp(40000, 53, b"\x12\x34\x01\x00");
    let whole = Frag::default();
    vec![
        frames::v4_frame(&[], a4, b4, 6, &[], whole, &tcp).frame,
        frames::v4_frame(&[(TPID_8021Q, 5)], a4, b4, 17, &[1, 1, 1, 1], whole, &udp).frame,
        frames::v4_frame(
            &[(TPID_8021AD, 5), (TPID_8021Q, 6)],
            a4,
            b4,
            17,
            &[],
            Frag {
                offset: 0,
                more: true,
                id: 1,
            },
            &udp,
        )
        .frame,
        frames::v4_frame(
            &[],
            a4,
            b4,
            17,
            &[],
            Frag {
                offset: 64,
                more: false,
                id: 1,
            },
            &udp,
        )
        .frame,
        frames::v4_frame(&[], a4, b4, 1, &[], whole, &frames::icmp(8, 0, &[0; 8])).frame,
        frames::v6_frame(&[], a6, b6, &[], 6, &tcp).frame,
        frames::v6_frame(
            &[],
            a6,
            b6,
            &[
                Ext::HopByHop(0),
                Ext::Routing(1),
                Ext::Fragment {
                    offset: 0,
                    more: true,
                },
            ],
            17,
            &udp,
        )
        .frame,
        frames::v6_frame(
            &[],
            a6,
            b6,
            &[
                Ext::DestOpts(0),
                Ext::Auth(2),
                Ext::Mobility(0),
                Ext::Hip(0),
                Ext::Shim6(0),
            ],
            6,
            &tcp,
        )
        .frame,
        frames::v6_frame(
            &[(TPID_8021Q, 9)],
            a6,
            b6,
            &[],
            58,
            &frames::icmp(128, 0, &[0; 8]),
        )
        .frame,
    ]
}

/// One frame: pure garbage, or a template with a few random mutations.
fn frame(rng: &mut Rng, templates: &[Vec<u8>]) -> Vec<u8> {
    if rng.usize(..10) < 3 {
        let len = 14 + rng.usize(..200);
        let mut f = vec![0; len];
        rng.fill(&mut f);
        let types = [0x0800u16, 0x86dd, 0x8100, 0x88a8, 0x0806];
        if rng.usize(..4) != 0 {
            f[12..14].copy_from_slice(&types[rng.usize(..types.len())].to_be_bytes());
        }
        return f;
    }
    let mut f = templates[rng.usize(..templates.len())].clone();
    for _ in 0..1 + rng.usize(..4) {
        let len = f.len();
        match rng.usize(..8) {
            // Flip a bit in the headers.
            0 | 1 => {
                let at = rng.usize(..len.min(120));
                f[at] ^= 1 << rng.usize(..8);
            }
            // Overwrite a header byte.
            2 => {
                let at = rng.usize(..len.min(120));
                f[at] = rng.u8(..);
            }
            // Cut the frame short (never below an Ethernet header).
            3 => {
                let keep = 14 + rng.usize(..len - 13);
                f.truncate(keep);
            }
            // Randomise addresses and ports: many distinct flows.
            4 | 5 => {
                for _ in 0..4 {
                    let at = 26 + rng.usize(..len.saturating_sub(26).clamp(1, 60));
                    if at < f.len() {
                        f[at] = rng.u8(..);
                    }
                }
            }
            // Grow it.
            6 => {
                let n = rng.usize(..64);
                f.extend((0..n).map(|_| rng.u8(..)));
            }
            // Push one more VLAN tag.
            7 if rng.usize(..2) == 0 => {
                let tpid = if rng.usize(..2) == 0 {
                    0x8100u16
                } else {
                    0x88a8
                };
                let tag = [(tpid >> 8) as u8, tpid as u8, 0, rng.u8(..)];
                f.splice(12..12, tag);
            }
            // Replace the ethertype.
            _ => {
                let types = [0x0800u16, 0x86dd, 0x8100, 0x88a8];
                f[12..14].copy_from_slice(&types[rng.usize(..types.len())].to_be_bytes());
            }
        }
    }
    f
}

#[derive(Default)]
struct Books {
    flows: HashMap<FlowKey, ([u64; 2], [u64; 2])>,
    reasons: [u64; counter::UNATTRIBUTED_REASONS as usize],
}

impl Books {
    fn add(&mut self, f: &[u8]) {
        match parse_frame(f) {
            Ok(p) => {
                let e = self.flows.entry(p.key).or_default();
                e.0[p.dir] += 1;
                e.1[p.dir] += f.len() as u64;
            }
            Err(r) => self.reasons[r as usize] += 1,
        }
    }
}

fn balance(k: &Kernel, books: &Books, pushed: usize, what: &str) {
    let counters = k.counters();
    let kflows = k.flows();
    let attributed: u64 = kflows
        .iter()
        .map(|(_, s)| s.packets[0] + s.packets[1])
        .sum();
    let unattributed: u64 = counters[..counter::UNATTRIBUTED_REASONS as usize]
        .iter()
        .sum();
    println!(
        "{what}: {pushed} frames = {attributed} attributed in {} flows + {unattributed} unattributed {:?}",
        kflows.len(),
        counter::NAMES.iter().zip(counters.iter()).collect::<Vec<_>>()
    );
    assert_eq!(
        counters[counter::FLOWS_CREATED as usize],
        kflows.len() as u64,
        "{what}: flows were evicted; the map is too small for the test"
    );
    assert_eq!(
        attributed + unattributed,
        pushed as u64,
        "{what}: packets = attributed + unattributed by reason"
    );
    assert_eq!(
        &counters[..counter::UNATTRIBUTED_REASONS as usize],
        &books.reasons[..],
        "{what}: reasons differ from the user parser"
    );
    assert_eq!(
        counters[counter::MAP_FULL as usize],
        0,
        "{what}: map refused inserts"
    );
    assert_eq!(
        kflows.len(),
        books.flows.len(),
        "{what}: flow count differs from the user parser"
    );
    for (key, s) in &kflows {
        let (packets, bytes) = books
            .flows
            .get(key)
            .unwrap_or_else(|| panic!("{what}: kernel flow {key:?} unknown to the user parser"));
        assert_eq!(
            (&s.packets, &s.bytes),
            (packets, bytes),
            "{what}: counts differ for {key:?}"
        );
    }
    assert!(
        attributed > pushed as u64 / 10 && unattributed > pushed as u64 / 10,
        "{what}: the mix must exercise both outcomes"
    );
}

#[test]
fn kernel_fuzz_a_million_frames_all_pass_and_counters_add_up() {
    println!("seed {SEED:#x}");
    let templates = templates();
    let mut rng = Rng::with_seed(SEED);
    let mut k = Kernel::load(1 << 21);
    let mut books = Books::default();
    for _ in 0..FRAMES {
        let f = frame(&mut rng, &templates);
        k.xdp(&f);
        books.add(&f);
    }
    balance(&k, &books, FRAMES, "xdp");

    let mut k = Kernel::load(1 << 18);
    let mut books = Books::default();
    let mut pushed = 0;
    while pushed < TC_FRAMES {
        let f = frame(&mut rng, &templates);
        if !tc_test_run_accepts(&f) {
            continue;
        }
        k.tc(&f);
        books.add(&f);
        pushed += 1;
    }
    balance(&k, &books, TC_FRAMES, "tc egress");
}

/// Two CPUs creating the same flows at the same moment: every packet lands in the one entry
/// (the loser of the insert race adds to the winner's), none is lost.
#[test]
fn kernel_two_cpus_creating_the_same_flows_lose_no_packet() {
    use std::os::fd::{AsFd, AsRawFd};
    const FLOWS: usize = 50_000;
    let mut k = Kernel::load(1 << 17);
    let fd =
        k.dp.xdp()
            .expect("xdp program")
            .fd()
            .expect("program fd")
            .as_fd()
            .as_raw_fd();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "kernel test cannot run: it needs two CPUs to race, this machine has {cpus}"
    );
    let frames: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| {
            let i = i as u32;
            let src = [10, 9, (i >> 8) as u8, i as u8];
            frames::v4_frame(
                &[],
                src,
                [10, 8, 0, 1],
                17,
                &[],
                Frag::default(),
                &frames::udp(1000 + (i >> 16) as u16, 53, b"q"),
            )
            .frame
        })
        .collect();
    // Both threads start each frame together (a spin rendezvous per frame), so both look the
    // new key up before either inserts it as often as the machine allows.
    let arrived = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for cpu in 0..2 {
            let (frames, arrived) = (&frames, &arrived);
            s.spawn(move || {
                pin_to_cpu(cpu);
                for (i, f) in frames.iter().enumerate() {
                    arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    while arrived.load(std::sync::atomic::Ordering::SeqCst) < 2 * (i + 1) {
                        std::hint::spin_loop();
                    }
                    let verdict = test_run_fd(fd, f).expect("test run");
                    assert_eq!(verdict, sensor_tests::kernel::XDP_PASS);
                }
            });
        }
    });
    let counters = k.counters();
    let flows = k.flows();
    let races = counters[counter::CREATE_RACES as usize];
    println!("create races seen: {races}");
    assert!(
        races > 0,
        "the CPUs never raced to create a flow, so this run proved nothing about the race"
    );
    assert_eq!(flows.len(), FLOWS);
    assert!(
        flows.iter().all(|(_, s)| s.packets[0] + s.packets[1] == 2),
        "every flow holds both CPUs' packets"
    );
    assert_eq!(counters[counter::FLOWS_CREATED as usize], FLOWS as u64);
}
