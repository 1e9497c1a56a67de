//! A backend's reply: leaves from the public address, unless it answers the gateway itself.

use super::*;

#[test]
fn a_backend_reply_leaves_from_the_public_address_unless_it_is_for_the_gateway() {
    let Some(mut h) =
        Harness::new("a_backend_reply_leaves_from_the_public_address_unless_it_is_for_the_gateway")
    else {
        return;
    };
    h.allow_redirects();
    let reply = Frame::tcp((BACKEND, 22), (CLIENT, 40000)).bytes();
    let out = h.expect(&reply, h.leg, (XDP_REDIRECT, counter::FWD_REDIRECT), "");
    let seen = parse(&out);
    assert_eq!(seen.src, (PUBLIC, SSH_PORT));
    assert_eq!(seen.dst, (CLIENT, 40000));
    let c = h.route(SSH_ID);
    assert_eq!(
        (c.outbound_packets, c.outbound_bytes),
        (1, reply.len() as u64)
    );
    // The backend answering the gateway's own connection (to the leg's address): untouched.
    let to_gateway = Frame::tcp((BACKEND, 22), (LEG, 50000)).bytes();
    let out = h.expect(&to_gateway, h.leg, (XDP_PASS, counter::PASS_LOCAL), "");
    assert_eq!(out, to_gateway);
}
