/* MFS data plane for bmv2 (v1model). Control API: docs/p4-api.md.
 * Run simple_switch_grpc with `-- --priority-queues 8`: the level becomes
 * standard_metadata.priority = 7 - level (bmv2 serves priority 7 first).
 */
#include <core.p4>
#include <v1model.p4>

#include "../shared/headers.p4"
#include "../shared/parser.p4"
#include "../shared/classify.p4"

parser MfsParser(packet_in pkt, out headers_t hdr, inout mfs_meta_t meta,
                 inout standard_metadata_t standard_metadata) {
    MfsHeaderParser() headers_parser;
    state start {
        meta.mfs_port = false;
        meta.csum_err = false;
        transition select(standard_metadata.ingress_port) {
            CPU_PORT: parse_cpu_out;   /* a P4Runtime PacketOut: a controller operation */
            default: parse_headers;
        }
    }
    state parse_cpu_out {
        pkt.extract(hdr.cpu_out);
        transition accept;
    }
    state parse_headers {
        headers_parser.apply(pkt, hdr, meta);
        transition accept;
    }
}

/* The IPv4 header checksum over the whole header, options included (fields of
 * option headers that are not present do not count). A mismatch sets
 * standard_metadata.checksum_error; the ingress drops and counts the packet. */
control MfsVerifyChecksum(inout headers_t hdr, inout mfs_meta_t meta) {
    apply {
        verify_checksum(hdr.ipv4.isValid() && hdr.ipv4.version == 4 && hdr.ipv4.ihl >= 5,
            { hdr.ipv4.version, hdr.ipv4.ihl, hdr.ipv4.dscp, hdr.ipv4.ecn,
              hdr.ipv4.total_len, hdr.ipv4.identification, hdr.ipv4.flags,
              hdr.ipv4.frag_offset, hdr.ipv4.ttl, hdr.ipv4.protocol,
              hdr.ipv4.src_addr, hdr.ipv4.dst_addr,
              hdr.ipv4_o8.w0, hdr.ipv4_o8.w1, hdr.ipv4_o8.w2, hdr.ipv4_o8.w3,
              hdr.ipv4_o8.w4, hdr.ipv4_o8.w5, hdr.ipv4_o8.w6, hdr.ipv4_o8.w7,
              hdr.ipv4_o4.w0, hdr.ipv4_o4.w1, hdr.ipv4_o4.w2, hdr.ipv4_o4.w3,
              hdr.ipv4_o2.w0, hdr.ipv4_o2.w1, hdr.ipv4_o1.w0 },
            hdr.ipv4.hdr_checksum, HashAlgorithm.csum16);
    }
}

control MfsIngress(inout headers_t hdr, inout mfs_meta_t meta,
                   inout standard_metadata_t standard_metadata) {
    @id(0x12000001) @name(".MfsIngress.class_counter")
    counter(CLASS_COUNTER_SIZE, CounterType.packets_and_bytes) class_counter;
    @id(0x12000003) @name(".MfsIngress.drop_counter")
    counter(DROP_COUNTER_SIZE, CounterType.packets_and_bytes) drop_counter;
    @id(0x16000003) @name(".MfsIngress.miss_filter")
    register<bit<8>>(MISS_FILTER_SIZE) miss_filter;

    MfsValidate() validate;
    MfsClassify() classify;
    bit<8> ttl_in = 0;
    bool miss = false;
    bool rejected = false;
    bool dropped = false;
    bit<32> drop_reason = 0;

    @id(0x01000007) @name(".MfsIngress.edge_port")
    action edge_port() {
        meta.fabric = false;
    }
    @id(0x01000008) @name(".MfsIngress.fabric_port")
    action fabric_port() {
        meta.fabric = true;
    }
    @id(0x01000009) @name(".MfsIngress.routable")
    action routable() {
        meta.routable = true;
    }
    @id(0x01000001) @name(".MfsIngress.route")
    action route(port_t port, mac_addr_t src_mac, mac_addr_t dst_mac) {
        standard_metadata.egress_spec = port;
        hdr.ethernet.src_addr = src_mac;
        hdr.ethernet.dst_addr = dst_mac;
        hdr.ipv4.ttl = hdr.ipv4.ttl - 1;
        meta.csum = true;
    }
    @id(0x01000002) @name(".MfsIngress.drop")
    action drop() {
        mark_to_drop(standard_metadata);
    }
    @id(0x01000003) @name(".MfsIngress.l2_forward")
    action l2_forward(port_t port) {
        standard_metadata.egress_spec = port;
    }
    @id(0x01000004) @name(".MfsIngress.flood")
    action flood() {
        standard_metadata.mcast_grp = FLOOD_MCAST_GROUP;
        meta.flood = true;
    }

    @id(0x02000008) @name(".MfsIngress.port_mode")
    table port_mode {
        key = { standard_metadata.ingress_port : exact @name("ingress_port"); }
        actions = { edge_port; fabric_port; }
        const default_action = edge_port();
        size = PORT_MODE_SIZE;
    }
    @id(0x02000009) @name(".MfsIngress.router_mac")
    table router_mac {
        key = { hdr.ethernet.dst_addr : exact @name("dst_addr"); }
        actions = { routable; NoAction; }
        default_action = routable();
        size = ROUTER_MAC_SIZE;
    }
    @id(0x02000001) @name(".MfsIngress.ipv4_lpm")
    table ipv4_lpm {
        key = { hdr.ipv4.dst_addr : lpm @name("dst_addr"); }
        actions = { route; drop; @defaultonly NoAction; }
        default_action = NoAction();
        size = IPV4_LPM_SIZE;
    }
    @id(0x02000002) @name(".MfsIngress.l2_fwd")
    table l2_fwd {
        key = { hdr.ethernet.dst_addr : exact @name("dst_addr"); }
        actions = { l2_forward; flood; }
        default_action = flood();
        size = L2_FWD_SIZE;
    }

    apply {
        meta.flood = false;
        meta.csum = false;
        meta.fabric = false;
        meta.routable = false;
        if (standard_metadata.ingress_port == CPU_PORT) {
            /* a controller operation (PacketOut): apply it, count it, drop the packet
             * (also one too short for the header). The only other miss_filter
             * access is on the data path below. */
            if (hdr.cpu_out.isValid() && hdr.cpu_out.op == CPU_OP_CLEAR_MISS_FILTER) {
                miss_filter.write((bit<32>)hdr.cpu_out.index[11:0], 0);
            }
            class_counter.count(CLASS_CONTROLLER_OP);
            drop();
            return;
        }
        port_mode.apply();

        /* IPv4 sanity: what we do not handle is dropped and counted */
        if (hdr.ipv4.isValid()) {
            if (hdr.ipv4.version != 4 || hdr.ipv4.ihl < 5) {
                dropped = true;
                drop_reason = DROP_BAD_IPV4;
            } else if (standard_metadata.checksum_error == 1) {
                dropped = true;
                drop_reason = DROP_IPV4_CHECKSUM;
            }
        }

        if (dropped) {
            drop();
        } else {
            /* forwarding: route only frames addressed to the router */
            bool routed = false;
            if (hdr.ipv4.isValid()) {
                router_mac.apply();
            }
            if (meta.routable) {
                ttl_in = hdr.ipv4.ttl;
                switch (ipv4_lpm.apply().action_run) {
                    route: {
                        routed = true;
                        if (ttl_in <= 1) {
                            drop();   /* TTL expired */
                            dropped = true;
                            drop_reason = DROP_TTL_EXPIRED;
                        }
                    }
                    drop: {
                        routed = true;
                        dropped = true;
                        drop_reason = DROP_ROUTE_DROP;
                    }
                }
            }
            if (!routed) {
                l2_fwd.apply();
            }

            /* classification */
            validate.apply(hdr, meta,
                           standard_metadata.parser_error == error.NoError);
            classify.apply(hdr, meta, standard_metadata.ingress_port, miss, rejected);
            class_counter.count(meta.cls);
            if (rejected) {
                class_counter.count(CLASS_PROPOSAL_REJECTED);
            }
            if (miss) {
                /* report each unknown flow once, until the controller clears the cell */
                bit<8> seen;
                miss_filter.read(seen, (bit<32>)meta.filter_index);
                if (seen == 0) {
                    miss_filter.write((bit<32>)meta.filter_index, 1);
                    digest<mfs_miss_t>(1, {hdr.mfs.stage, hdr.mfs.flow_id, hdr.mfs.request_id,
                                           hdr.ipv4.src_addr, standard_metadata.ingress_port,
                                           meta.filter_index});
                }
            }
            /* the one level -> queue conversion on v1model (mfs/levels.py) */
            standard_metadata.priority = (bit<3>)(LOWEST_LEVEL - meta.level);
        }
        if (dropped) {
            drop_counter.count(drop_reason);
        }
    }
}

control MfsEgress(inout headers_t hdr, inout mfs_meta_t meta,
                  inout standard_metadata_t standard_metadata) {
    @id(0x12000002) @name(".MfsEgress.queue_counter")
    counter(QUEUE_STATS_SIZE, CounterType.packets_and_bytes) queue_counter;
    @id(0x16000001) @name(".MfsEgress.queue_depth")
    register<bit<32>>(QUEUE_STATS_SIZE) queue_depth;
    @id(0x16000002) @name(".MfsEgress.queue_delay")
    register<bit<32>>(QUEUE_STATS_SIZE) queue_delay;

    MfsDscp() dscp;

    apply {
        /* flood pruning: no copy back to the ingress port */
        if (meta.flood && standard_metadata.egress_port == standard_metadata.ingress_port) {
            mark_to_drop(standard_metadata);
        } else {
            dscp.apply(hdr, meta, standard_metadata.egress_port);
            bit<32> idx = ((bit<32>)standard_metadata.egress_port) * 8 + (bit<32>)meta.level;
            queue_counter.count(idx);
            /* keep the maximum until the controller clears the cell (read-and-clear) */
            bit<32> cur;
            queue_depth.read(cur, idx);
            if ((bit<32>)standard_metadata.deq_qdepth > cur) {
                queue_depth.write(idx, (bit<32>)standard_metadata.deq_qdepth);
            }
            queue_delay.read(cur, idx);
            if (standard_metadata.deq_timedelta > cur) {
                queue_delay.write(idx, standard_metadata.deq_timedelta);
            }
        }
    }
}

/* Any change to the IPv4 header (TTL, DSCP): checksum over the whole header. */
control MfsComputeChecksum(inout headers_t hdr, inout mfs_meta_t meta) {
    apply {
        update_checksum(hdr.ipv4.isValid() && meta.csum,
            { hdr.ipv4.version, hdr.ipv4.ihl, hdr.ipv4.dscp, hdr.ipv4.ecn,
              hdr.ipv4.total_len, hdr.ipv4.identification, hdr.ipv4.flags,
              hdr.ipv4.frag_offset, hdr.ipv4.ttl, hdr.ipv4.protocol,
              hdr.ipv4.src_addr, hdr.ipv4.dst_addr,
              hdr.ipv4_o8.w0, hdr.ipv4_o8.w1, hdr.ipv4_o8.w2, hdr.ipv4_o8.w3,
              hdr.ipv4_o8.w4, hdr.ipv4_o8.w5, hdr.ipv4_o8.w6, hdr.ipv4_o8.w7,
              hdr.ipv4_o4.w0, hdr.ipv4_o4.w1, hdr.ipv4_o4.w2, hdr.ipv4_o4.w3,
              hdr.ipv4_o2.w0, hdr.ipv4_o2.w1, hdr.ipv4_o1.w0 },
            hdr.ipv4.hdr_checksum, HashAlgorithm.csum16);
    }
}

control MfsDeparser(packet_out pkt, in headers_t hdr) {
    apply {
        pkt.emit(hdr.ethernet);
        pkt.emit(hdr.vlan0);
        pkt.emit(hdr.vlan1);
        pkt.emit(hdr.arp);
        pkt.emit(hdr.ipv4);
        pkt.emit(hdr.ipv4_o8);
        pkt.emit(hdr.ipv4_o4);
        pkt.emit(hdr.ipv4_o2);
        pkt.emit(hdr.ipv4_o1);
        pkt.emit(hdr.tcp);
        pkt.emit(hdr.udp);
        pkt.emit(hdr.mfs);
    }
}

V1Switch(MfsParser(), MfsVerifyChecksum(), MfsIngress(), MfsEgress(),
         MfsComputeChecksum(), MfsDeparser()) main;
