//! `xdp-ceiling`: the least an XDP forwarder can do, as a yardstick for `cargo xtask bench`.
//!
//! It routes IPv4 without translating anything: `bpf_fib_lookup`, new MACs, TTL - 1 (with the
//! IP checksum update), `bpf_redirect` to the egress device. No maps, no NAT, no counters:
//! whatever srvgate's program costs on top of this is the price of its rewriting and
//! bookkeeping. Anything it cannot forward (not IPv4, IP options or fragments, no neighbour
//! yet, TTL about to expire) goes to the kernel (`XDP_PASS`).
//!
//! Not used by srvgate itself; the benchmark loads it with `ip link set DEV xdpdrv obj ...`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Only meaningful as BPF bytecode (built for bpfel-unknown-none by lb-userspace's
    // build.rs via aya-build, with every other binary of this crate). On the host it exists
    // so that the workspace builds and lints.
}

#[cfg(target_arch = "bpf")]
mod program {
    use core::mem::{self, size_of};

    use aya_ebpf::{
        bindings::{bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_SUCCESS},
        helpers::generated::{bpf_fib_lookup, bpf_redirect},
        macros::xdp,
        programs::XdpContext,
    };
    use lb_ebpf::{
        ipv4_csum_ttl_decrement, ipv4_shape, zero_in_place, EthHdr, Ipv4Hdr, Ipv4Shape, ETH_HLEN,
        ETH_P_IPV4,
    };

    const AF_INET: u8 = 2;

    #[xdp(frags)]
    pub fn xdp_ceiling(ctx: XdpContext) -> u32 {
        try_forward(&ctx).unwrap_or(xdp_action::XDP_PASS)
    }

    #[inline(always)]
    fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
        let start = ctx.data();
        if start + offset + size_of::<T>() > ctx.data_end() {
            return None;
        }
        Some((start + offset) as *mut T)
    }

    #[inline(always)]
    fn try_forward(ctx: &XdpContext) -> Option<u32> {
        let eth: *mut EthHdr = ptr_at(ctx, 0)?;
        // SAFETY: `eth` comes from `ptr_at`, which checked that the whole header lies
        // before `data_end`: inside the packet, which the program may read and write.
        if unsafe { (*eth).proto } != ETH_P_IPV4.to_be() {
            return None;
        }
        let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
        // SAFETY: `ip` comes from `ptr_at`, which checked that the whole header lies
        // before `data_end`: inside the packet, which the program may read and write.
        let (version_ihl, frag_off, ttl, protocol) = unsafe {
            (
                (*ip).version_ihl,
                u16::from_be((*ip).frag_off),
                (*ip).ttl,
                (*ip).protocol,
            )
        };
        if ipv4_shape(version_ihl, frag_off) != Ipv4Shape::Plain || ttl <= 1 {
            return None;
        }
        let mut fib = mem::MaybeUninit::uninit();
        let fib: &mut FibParams = zero_in_place(&mut fib);
        // SAFETY: `ip` comes from `ptr_at` (inside the packet), `ctx.ctx` is the program's
        // context, and the bindgen union fields written are plain integers.
        unsafe {
            fib.family = AF_INET;
            fib.l4_protocol = protocol;
            fib.__bindgen_anon_1.tot_len = u16::from_be((*ip).tot_len);
            fib.__bindgen_anon_2.tos = (*ip).tos;
            fib.ifindex = (*ctx.ctx).ingress_ifindex;
            fib.__bindgen_anon_3.ipv4_src = (*ip).saddr;
            fib.__bindgen_anon_4.ipv4_dst = (*ip).daddr;
        }
        // SAFETY: `fib` is a live, exclusive `FibParams` of the size passed; `ctx.ctx` is the
        // program's context.
        let rc = unsafe {
            bpf_fib_lookup(
                ctx.ctx as *mut _,
                fib as *mut FibParams,
                size_of::<FibParams>() as i32,
                0,
            )
        };
        if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
            return None;
        }
        // SAFETY: `eth` and `ip` come from `ptr_at`: inside the packet, which the program
        // may write; bpf_redirect takes plain integers.
        unsafe {
            (*ip).check = ipv4_csum_ttl_decrement((*ip).check, ttl, protocol);
            (*ip).ttl = ttl - 1;
            (*eth).dst = fib.dmac;
            (*eth).src = fib.smac;
            Some(bpf_redirect(fib.ifindex, 0) as u32)
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // SAFETY: the verifier refuses a program with a reachable path to here (there is no
        // unwinding in BPF), so this is never executed.
        unsafe { core::hint::unreachable_unchecked() }
    }

    #[link_section = "license"]
    #[no_mangle]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}
