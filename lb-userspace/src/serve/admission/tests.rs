use std::net::Ipv4Addr;

use super::*;

fn ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))
}

fn take(adm: &Arc<Admission>, ip: IpAddr) -> Slot {
    let (slot, evicted) = adm.admit(ip).expect("admitted");
    assert_eq!(evicted, None);
    slot
}

/// Whether the slot's task has been told to end, without waiting.
async fn told_to_end(slot: &mut Slot) -> bool {
    tokio::select! {
        biased;
        () = slot.evicted() => true,
        () = std::future::ready(()) => false,
    }
}

#[test]
fn a_client_is_an_ipv4_address_or_an_ipv6_64() {
    let key = |s: &str| ClientKey::of(s.parse().unwrap());
    assert_eq!(key("10.0.0.1"), key("::ffff:10.0.0.1"));
    assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    assert_eq!(
        key("2001:db8:1:2::1"),
        key("2001:db8:1:2:ffff:ffff:ffff:ffff")
    );
    assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    assert_eq!(key("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    assert_eq!(key("::ffff:10.0.0.1").to_string(), "10.0.0.1");
}

#[test]
fn counts_per_client_and_in_total() {
    let adm = Admission::new(3, 2, Share::Fewer);
    let (a, b) = (ip(1), ip(2));
    let a1 = take(&adm, a);
    let _a2 = take(&adm, a);
    assert_eq!(adm.admit(a).err(), Some(Refused::ClientFull));
    // The same client on a dual-stack socket is the same client.
    let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
    assert_eq!(adm.admit(mapped).err(), Some(Refused::ClientFull));
    let _b1 = take(&adm, b);
    // Full, and a holds 2: b with a second would hold as many, so it waits.
    assert_eq!(adm.admit(b).err(), Some(Refused::Full));
    drop(a1);
    assert_eq!(adm.open(), 2);
    let _b2 = take(&adm, b);
    assert_eq!(adm.admit(a).err(), Some(Refused::Full));
}

#[test]
fn an_ipv6_client_is_its_64() {
    let adm = Admission::new(8, 2, Share::Fewer);
    let _a = take(&adm, "2001:db8:1:2::1".parse().unwrap());
    let _b = take(&adm, "2001:db8:1:2:ffff::9".parse().unwrap());
    assert_eq!(
        adm.admit("2001:db8:1:2::3".parse().unwrap()).err(),
        Some(Refused::ClientFull)
    );
    // The next /64 is someone else.
    assert!(adm.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
}

#[tokio::test]
async fn at_the_cap_a_newcomer_takes_the_idlest_place_of_the_greediest_client() {
    let adm = Admission::new(7, 4, Share::Fewer);
    let mut greedy: Vec<Slot> = (0..4).map(|_| take(&adm, ip(1))).collect();
    let mut modest: Vec<Slot> = (0..3).map(|_| take(&adm, ip(2))).collect();
    // All of them move but greedy[1].
    tokio::time::sleep(Duration::from_millis(30)).await;
    for (i, s) in greedy.iter().chain(&modest).enumerate() {
        if i != 1 {
            s.activity().touch();
        }
    }
    // The greediest client gets nothing more, at another's expense or not.
    assert_eq!(adm.admit(ip(1)).err(), Some(Refused::ClientFull));
    let (_new, evicted) = adm.admit(ip(3)).expect("a newcomer is admitted");
    assert_eq!(
        evicted,
        Some(Evicted {
            from: ClientKey::of(ip(1))
        })
    );
    assert_eq!(adm.open(), 7);
    for (i, s) in greedy.iter_mut().enumerate() {
        assert_eq!(told_to_end(s).await, i == 1, "greedy[{i}]");
    }
    for s in &mut modest {
        assert!(!told_to_end(s).await);
    }
    // The evicted slot's end gives back nothing more: its place went to the newcomer.
    drop(greedy.remove(1));
    assert_eq!(adm.open(), 7);
    // Greedy now holds 3, as modest does: no one else gives way to either of them.
    assert_eq!(adm.admit(ip(1)).err(), Some(Refused::Full));
    assert_eq!(adm.admit(ip(2)).err(), Some(Refused::Full));
    // A client holding none still gets in: with it, it holds fewer than they do.
    let (_fourth, evicted) = adm.admit(ip(4)).expect("a fourth client is admitted");
    assert!(evicted.is_some());
    assert_eq!(adm.open(), 7);
}

#[test]
fn busy_connections_are_not_evicted() {
    let adm = Admission::new(2, 2, Share::AtMost);
    let busy: Vec<Slot> = (0..2).map(|_| take(&adm, ip(1))).collect();
    for s in &busy {
        s.activity().set_busy(true);
    }
    assert_eq!(adm.admit(ip(2)).err(), Some(Refused::Full));
    busy[0].activity().set_busy(false);
    let (_new, evicted) = adm.admit(ip(2)).expect("the idle one gives way");
    assert_eq!(
        evicted,
        Some(Evicted {
            from: ClientKey::of(ip(1))
        })
    );
}

#[tokio::test]
async fn idle_connections_that_lose_nothing_give_way_to_an_equal() {
    let adm = Admission::new(2, 2, Share::AtMost);
    let _a = take(&adm, ip(1));
    let _b = take(&adm, ip(2));
    let (_c, evicted) = adm.admit(ip(3)).expect("admitted");
    assert!(evicted.is_some());
    // With Share::Fewer the same newcomer would have been refused.
    let adm = Admission::new(2, 2, Share::Fewer);
    let _a = take(&adm, ip(1));
    let _b = take(&adm, ip(2));
    assert_eq!(adm.admit(ip(3)).err(), Some(Refused::Full));
    // A client holding as many as the greediest takes no one else's place: it replaces
    // its own idle one.
    let adm = Admission::new(2, 2, Share::AtMost);
    let mut a = vec![take(&adm, ip(1)), take(&adm, ip(1))];
    let (_c, evicted) = adm.admit(ip(2)).expect("admitted");
    assert_eq!(
        evicted,
        Some(Evicted {
            from: ClientKey::of(ip(1))
        })
    );
    let (_d, evicted) = adm.admit(ip(2)).expect("admitted");
    assert_eq!(
        evicted,
        Some(Evicted {
            from: ClientKey::of(ip(2))
        })
    );
    assert_eq!(adm.open(), 2);
    let mut kept = 0;
    for s in &mut a {
        kept += usize::from(!told_to_end(s).await);
    }
    assert_eq!(kept, 1, "ip(1) keeps one");
}
