//! Lists the IPVS services and destinations of the current network namespace with their counters, like
//! `ipvsadm -Ln --stats`, through this crate: `cargo run -p switchyard-ipvs-netlink --example ipvs-list`.

use switchyard_ipvs_netlink::{Client, ServiceFlags};

fn main() {
    let mut client = match Client::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ipvs-list: {e}");
            std::process::exit(1);
        }
    };
    let info = client.info().expect("GET_INFO");
    println!("IP Virtual Server version {} (size={})", info.version_string(), info.conn_tab_size);
    println!("Prot LocalAddress:Port Scheduler Flags       Conns   InPkts  OutPkts  InBytes OutBytes");
    println!("  -> RemoteAddress:Port Forward Weight ActiveConn InActConn");
    let mut services = client.services().expect("service dump");
    services.sort_by_key(|s| s.id);
    for s in services {
        let mut flags = String::new();
        if s.flags.contains(ServiceFlags::PERSISTENT) {
            flags = format!("persistent {}", s.timeout);
        }
        let st = s.stats;
        println!(
            "{} {} {flags} {} {} {} {} {}",
            s.id, s.scheduler, st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes
        );
        for d in client.destinations(&s.id).expect("destination dump") {
            println!(
                "  -> {} {:?} {} {} {}",
                std::net::SocketAddr::new(d.addr, d.port),
                d.fwd_method,
                d.weight,
                d.active_conns,
                d.inact_conns
            );
        }
    }
}
