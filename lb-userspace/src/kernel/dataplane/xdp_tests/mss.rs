//! MSS clamping of SYN and SYN-ACK to the smallest leg's MTU.

use super::*;

#[test]
fn syn_and_syn_ack_are_clamped_to_the_smallest_legs_mss() {
    let Some(mut h) = Harness::new("syn_and_syn_ack_are_clamped_to_the_smallest_legs_mss") else {
        return;
    };
    h.allow_redirects();
    // The client's SYN, with the option at an even and at an odd offset (after one NOP).
    // Also a bare SYN: nothing after its one option.
    for (nops, payload) in [(0, 0), (0, 32), (1, 0), (3, 32)] {
        let syn = Frame {
            syn: Some((nops, 1460, false)),
            payload,
            ..Frame::tcp((CLIENT, 40000), (PUBLIC, SSH_PORT))
        };
        let (action, out, _) = h.run(&syn.bytes(), 1);
        assert_eq!(action, XDP_REDIRECT);
        // parse() recomputes both checksums from scratch.
        assert_eq!(parse(&out).dst, (BACKEND, 22));
        assert_eq!(mss_of(&out), Some(MSS), "{nops} NOPs");
    }
    // The backend's SYN-ACK on its way out.
    let syn_ack = Frame {
        syn: Some((0, 8960, true)),
        ..Frame::tcp((BACKEND, 22), (CLIENT, 40000))
    };
    let (_, out, _) = h.run(&syn_ack.bytes(), h.leg);
    assert_eq!(parse(&out).src, (PUBLIC, SSH_PORT));
    assert_eq!(mss_of(&out), Some(MSS));
    // Smaller already: kept.
    let small = Frame {
        syn: Some((0, 536, false)),
        ..Frame::tcp((CLIENT, 40000), (PUBLIC, SSH_PORT))
    };
    let (_, out, _) = h.run(&small.bytes(), 1);
    assert_eq!(mss_of(&out), Some(536));
}
