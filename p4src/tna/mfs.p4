/* MFS data plane for Tofino (TNA). Control API: docs/p4-api.md.
 * Compile: bf-p4c --target tofino --arch tna (see docs/tofino.md, p4src/compile.sh).
 * The level becomes ig_tm_md.qid = 7 - level (and ingress_cos, so PFC pauses
 * per level, not the whole port); the TM must be configured for strict
 * priority (controller/tofino.py generates that from p4src/queues.yaml):
 * Tofino queues are NOT strict priority by default.
 * The port mode (edge / fabric) is port metadata (no table, no stage):
 * BF-RT pipe.MfsIngressParser.$PORT_METADATA, written by the setup script.
 * bf-p4c prefixes table and extern names with the Pipeline instance name
 * ("pipe."); the table, action, field and parameter names after that prefix
 * are those of docs/p4-api.md.
 */
#include <core.p4>
#include <tna.p4>

#define MFS_TNA 1
/* The CPU port PacketOuts arrive on (docs/p4-api.md, "Controller operations"): the
 * PCIe CPU port, 192 on a 2-pipe Tofino 1 (320 on 4 pipes): -DMFS_TNA_CPU_PORT=320 */
#ifndef MFS_TNA_CPU_PORT
#define MFS_TNA_CPU_PORT 192
#endif
#include "../shared/headers.p4"
#include "../shared/parser.p4"
#include "../shared/classify.p4"

/* Port metadata (at most PORT_METADATA_SIZE = 64 bits on Tofino 1), per ingress
 * port, set by the control plane (BF-RT $PORT_METADATA): no table, no stage. */
struct port_md_t {
    bit<1> fabric;   /* 1: fabric (switch-facing) port, trust DSCP */
    bit<7> pad;
}

/* Ingress -> egress: the level and what egress needs for pruning. */
header bridged_md_h {
    bit<8>   level;
    bit<7>   pad0;
    PortId_t ingress_port;
    bit<7>   pad1;
    bit<1>   flood;
}

struct ig_headers_t {
    bridged_md_h bridged;
    headers_t    h;
}

struct ig_meta_t {
    mfs_meta_t mfs;
    port_md_t  port_md;
    bit<8>     ttl_in;
    bit<1>     miss_clear;   /* the miss_filter access clears the cell (controller op) */
}

struct eg_meta_t {
    mfs_meta_t mfs;
    PortId_t   ingress_port;
}

parser MfsIngressParser(packet_in pkt, out ig_headers_t hdr, out ig_meta_t meta,
                        out ingress_intrinsic_metadata_t ig_intr_md) {
    MfsHeaderParser() headers_parser;
    state start {
        pkt.extract(ig_intr_md);
        meta.port_md = port_metadata_unpack<port_md_t>(pkt);
        meta.mfs = {false, false, false, false, false, false, false, false, false, 0, 0, 0, 0, 0};
        meta.ttl_in = 0;
        meta.miss_clear = 0;
        transition select(ig_intr_md.ingress_port) {
            MFS_TNA_CPU_PORT: parse_cpu_out;   /* a P4Runtime PacketOut: a controller operation */
            default: parse_headers;
        }
    }
    state parse_cpu_out {
        pkt.extract(hdr.h.cpu_out);
        transition accept;
    }
    state parse_headers {
        headers_parser.apply(pkt, hdr.h, meta.mfs);
        transition accept;
    }
}

control MfsIngress(inout ig_headers_t hdr, inout ig_meta_t meta,
                   in ingress_intrinsic_metadata_t ig_intr_md,
                   in ingress_intrinsic_metadata_from_parser_t ig_prsr_md,
                   inout ingress_intrinsic_metadata_for_deparser_t ig_dprsr_md,
                   inout ingress_intrinsic_metadata_for_tm_t ig_tm_md) {
    @id(0x12000001) @name(".MfsIngress.class_counter")
    Counter<bit<32>, bit<32>>(CLASS_COUNTER_SIZE, CounterType_t.PACKETS_AND_BYTES) class_counter;
    @id(0x12000003) @name(".MfsIngress.drop_counter")
    Counter<bit<32>, bit<32>>(DROP_COUNTER_SIZE, CounterType_t.PACKETS_AND_BYTES) drop_counter;
    @id(0x16000003) @name(".MfsIngress.miss_filter")
    Register<bit<8>, bit<12>>(MISS_FILTER_SIZE, 0) miss_filter;

    /* The one access to miss_filter. An unknown flow: test-and-set, 1 when the
     * cell was clear (first miss of this flow id: report it). The controller
     * operation CPU_OP_CLEAR_MISS_FILTER (meta.miss_clear == 1): clear the cell.
     * One RegisterAction executed at one place: bf-p4c gives a register used
     * by two tables in different stages a copy in each stage (measured: the
     * clear then never reached the test-and-set's copy). */
    RegisterAction<bit<8>, bit<12>, bit<1>>(miss_filter) miss_access = {
        void apply(inout bit<8> value, out bit<1> first) {
            first = 0;
            if (meta.miss_clear == 1) {
                value = 0;
            } else {
                if (value == 0) {
                    first = 1;
                }
                value = 1;
            }
        }
    };

    MfsValidate() validate;
    MfsClassify() classify;
    bool miss = false;
    bool rejected = false;   /* not counted on Tofino, see below */
    bool dropped = false;
    bool count_class = false;
    bit<32> drop_reason = 0;

    @id(0x01000009) @name(".MfsIngress.routable")
    action routable() {
        meta.mfs.routable = true;
    }
    @id(0x01000001) @name(".MfsIngress.route")
    action route(port_t port, mac_addr_t src_mac, mac_addr_t dst_mac) {
        ig_tm_md.ucast_egress_port = (PortId_t)port;
        hdr.h.ethernet.src_addr = src_mac;
        hdr.h.ethernet.dst_addr = dst_mac;
        hdr.h.ipv4.ttl = hdr.h.ipv4.ttl - 1;
        meta.mfs.csum = true;
    }
    @id(0x01000002) @name(".MfsIngress.drop")
    action drop() {
        ig_dprsr_md.drop_ctl = 1;
    }
    @id(0x01000003) @name(".MfsIngress.l2_forward")
    action l2_forward(port_t port) {
        ig_tm_md.ucast_egress_port = (PortId_t)port;
    }
    @id(0x01000004) @name(".MfsIngress.flood")
    action flood() {
        ig_tm_md.mcast_grp_a = FLOOD_MCAST_GROUP;
        meta.mfs.flood = true;
    }

    @id(0x02000009) @name(".MfsIngress.router_mac")
    table router_mac {
        key = { hdr.h.ethernet.dst_addr : exact @name("dst_addr"); }
        actions = { routable; NoAction; }
        default_action = routable();
        size = ROUTER_MAC_SIZE;
    }
    @id(0x02000001) @name(".MfsIngress.ipv4_lpm")
    table ipv4_lpm {
        key = { hdr.h.ipv4.dst_addr : lpm @name("dst_addr"); }
        actions = { route; drop; @defaultonly NoAction; }
        default_action = NoAction();
        size = IPV4_LPM_SIZE;
    }
    @id(0x02000002) @name(".MfsIngress.l2_fwd")
    table l2_fwd {
        key = { hdr.h.ethernet.dst_addr : exact @name("dst_addr"); }
        actions = { l2_forward; flood; }
        default_action = flood();
        size = L2_FWD_SIZE;
    }

    apply {
        if (ig_intr_md.ingress_port == MFS_TNA_CPU_PORT) {
            /* a controller operation (PacketOut): apply it, count it, drop the packet
             * (also one too short for the header) */
            if (hdr.h.cpu_out.isValid() && hdr.h.cpu_out.op == CPU_OP_CLEAR_MISS_FILTER) {
                meta.mfs.filter_index = hdr.h.cpu_out.index;
                meta.miss_clear = 1;
                miss = true;   /* the miss_filter access below clears the cell */
            }
            meta.mfs.cls = CLASS_CONTROLLER_OP;
            count_class = true;
            drop();
        } else {
            if (meta.port_md.fabric == 1) {
                meta.mfs.fabric = true;
            }

            /* IPv4 sanity: what we do not handle is dropped and counted */
            if (hdr.h.ipv4.isValid()) {
                if (hdr.h.ipv4.version != 4 || hdr.h.ipv4.ihl < 5) {
                    dropped = true;
                    drop_reason = DROP_BAD_IPV4;
                } else if (meta.mfs.csum_err) {
                    dropped = true;
                    drop_reason = DROP_IPV4_CHECKSUM;
                }
            }

            if (dropped) {
                drop();
            } else {
                /* set here, not after classify: bf-p4c would merge it into the action
                 * of classify's last step and delay the counter by stages */
                count_class = true;
                bool routed = false;
                if (hdr.h.ipv4.isValid()) {
                    router_mac.apply();
                }
                if (meta.mfs.routable) {
                    meta.ttl_in = hdr.h.ipv4.ttl;
                    switch (ipv4_lpm.apply().action_run) {
                        route: {
                            routed = true;
                            if (meta.ttl_in <= 1) {
                                drop();
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

                validate.apply(hdr.h, meta.mfs, ig_prsr_md.parser_err == 0);
                classify.apply(hdr.h, meta.mfs, (port_t)ig_intr_md.ingress_port, miss, rejected);
                /* class_counter[7] (proposal rejected) is not counted on Tofino:
                 * one packet may access a Counter only once per pipeline pass
                 * (docs/tofino.md, "Differences from bmv2"). */
                /* the one level -> queue conversion on TNA (mfs/levels.py); the
                 * same class for PFC / ingress admission (iCoS) */
                ig_tm_md.qid = (QueueId_t)(LOWEST_LEVEL - meta.mfs.level);
                ig_tm_md.ingress_cos = (bit<3>)(LOWEST_LEVEL - meta.mfs.level);
            }
            if (dropped) {
                drop_counter.count(drop_reason);
            }

            hdr.bridged.setValid();
            hdr.bridged.level = meta.mfs.level;
            hdr.bridged.pad0 = 0;
            hdr.bridged.ingress_port = ig_intr_md.ingress_port;
            hdr.bridged.pad1 = 0;
            hdr.bridged.flood = 0;
            if (meta.mfs.flood) {   /* a gateway, not a condition inside an action */
                hdr.bridged.flood = 1;
            }
        }
        /* one call site for class_counter and for miss_filter (see miss_access) */
        if (count_class) {
            class_counter.count(meta.mfs.cls);
        }
        if (miss) {
            if (miss_access.execute(meta.mfs.filter_index[11:0]) == 1) {
                ig_dprsr_md.digest_type = 1;
            }
        }
    }
}

control MfsIngressDeparser(packet_out pkt, inout ig_headers_t hdr, in ig_meta_t meta,
                           in ingress_intrinsic_metadata_for_deparser_t ig_dprsr_md) {
    @id(0x173e8129) @name(".mfs_miss_t")  /* = p4c hash id on v1model; bf-p4c may ignore it */
    Digest<mfs_miss_t>(1) miss_digest;
    Checksum() ipv4_csum;

    apply {
        if (meta.mfs.csum) {   /* only ever set for a valid IPv4 header */
            /* over the whole header: option words of absent option headers do not count */
            hdr.h.ipv4.hdr_checksum = ipv4_csum.update({
                hdr.h.ipv4.version, hdr.h.ipv4.ihl, hdr.h.ipv4.dscp, hdr.h.ipv4.ecn,
                hdr.h.ipv4.total_len, hdr.h.ipv4.identification, hdr.h.ipv4.flags,
                hdr.h.ipv4.frag_offset, hdr.h.ipv4.ttl, hdr.h.ipv4.protocol,
                hdr.h.ipv4.src_addr, hdr.h.ipv4.dst_addr,
                hdr.h.ipv4_o8.w0, hdr.h.ipv4_o8.w1, hdr.h.ipv4_o8.w2, hdr.h.ipv4_o8.w3,
                hdr.h.ipv4_o8.w4, hdr.h.ipv4_o8.w5, hdr.h.ipv4_o8.w6, hdr.h.ipv4_o8.w7,
                hdr.h.ipv4_o4.w0, hdr.h.ipv4_o4.w1, hdr.h.ipv4_o4.w2, hdr.h.ipv4_o4.w3,
                hdr.h.ipv4_o2.w0, hdr.h.ipv4_o2.w1, hdr.h.ipv4_o1.w0 });
        }
        if (ig_dprsr_md.digest_type == 1) {
            miss_digest.pack({hdr.h.mfs.stage, hdr.h.mfs.flow_id, hdr.h.mfs.request_id,
                              hdr.h.ipv4.src_addr, (port_t)hdr.bridged.ingress_port,
                              meta.mfs.filter_index});
        }
        pkt.emit(hdr);
    }
}

struct eg_headers_t {
    bridged_md_h bridged;   /* extracted, never emitted */
    headers_t    h;
}

parser MfsEgressParser(packet_in pkt, out eg_headers_t hdr, out eg_meta_t meta,
                       out egress_intrinsic_metadata_t eg_intr_md) {
    MfsHeaderParser() headers_parser;
    state start {
        pkt.extract(eg_intr_md);
        pkt.extract(hdr.bridged);
        meta.mfs = {false, false, false, false, false, false, false, false, false, 0, 0, 0, 0, 0};
        meta.mfs.level = hdr.bridged.level;
        meta.ingress_port = hdr.bridged.ingress_port;
        headers_parser.apply(pkt, hdr.h, meta.mfs);
        transition accept;
    }
}

control MfsEgress(inout eg_headers_t hdr, inout eg_meta_t meta,
                  in egress_intrinsic_metadata_t eg_intr_md,
                  in egress_intrinsic_metadata_from_parser_t eg_prsr_md,
                  inout egress_intrinsic_metadata_for_deparser_t eg_dprsr_md,
                  inout egress_intrinsic_metadata_for_output_port_t eg_oport_md) {
    @id(0x12000002) @name(".MfsEgress.queue_counter")
    Counter<bit<32>, bit<12>>(QUEUE_STATS_SIZE, CounterType_t.PACKETS_AND_BYTES) queue_counter;
    @id(0x16000001) @name(".MfsEgress.queue_depth")
    Register<bit<32>, bit<12>>(QUEUE_STATS_SIZE, 0) queue_depth;
    @id(0x16000002) @name(".MfsEgress.queue_delay")
    Register<bit<32>, bit<12>>(QUEUE_STATS_SIZE, 0) queue_delay;

    /* The stateful ALU takes its operands from PHV as they are: the width
     * change and the shift are done in the action before (bf-p4c: "expression
     * too complex for register action"). */
    bit<32> depth = 0;
    bit<32> delay = 0;

    /* keep the maximum until the controller clears the cell (read-and-clear) */
    RegisterAction<bit<32>, bit<12>, bit<32>>(queue_depth) max_depth = {
        void apply(inout bit<32> value) {
            value = max(value, depth);
        }
    };
    RegisterAction<bit<32>, bit<12>, bit<32>>(queue_delay) max_delay = {
        void apply(inout bit<32> value) {
            value = max(value, delay);
        }
    };

    MfsDscp() dscp;

    apply {
        /* (the parser cannot compare: the bridged flag is tested here) */
        if (hdr.bridged.flood == 1 && eg_intr_md.egress_port == meta.ingress_port) {
            eg_dprsr_md.drop_ctl = 1;   /* flood pruning */
        } else {
            dscp.apply(hdr.h, meta.mfs, (port_t)eg_intr_md.egress_port);
            /* the full 9-bit port: egress_port * 8 + level */
            bit<12> idx = ((bit<12>)eg_intr_md.egress_port) << 3 | (bit<12>)meta.mfs.level[2:0];
            queue_counter.count(idx);
            depth = (bit<32>)eg_intr_md.deq_qdepth;
            /* deq_timedelta is in ns; / 1024 approximates microseconds (a
             * slice, not a shift: the 18-bit field shares its container) */
            delay = (bit<32>)eg_intr_md.deq_timedelta[17:10];
            max_depth.execute(idx);
            max_delay.execute(idx);
        }
    }
}

control MfsEgressDeparser(packet_out pkt, inout eg_headers_t hdr, in eg_meta_t meta,
                          in egress_intrinsic_metadata_for_deparser_t eg_dprsr_md) {
    Checksum() ipv4_csum;
    apply {
        if (meta.mfs.csum) {   /* only ever set for a valid IPv4 header */
            hdr.h.ipv4.hdr_checksum = ipv4_csum.update({
                hdr.h.ipv4.version, hdr.h.ipv4.ihl, hdr.h.ipv4.dscp, hdr.h.ipv4.ecn,
                hdr.h.ipv4.total_len, hdr.h.ipv4.identification, hdr.h.ipv4.flags,
                hdr.h.ipv4.frag_offset, hdr.h.ipv4.ttl, hdr.h.ipv4.protocol,
                hdr.h.ipv4.src_addr, hdr.h.ipv4.dst_addr,
                hdr.h.ipv4_o8.w0, hdr.h.ipv4_o8.w1, hdr.h.ipv4_o8.w2, hdr.h.ipv4_o8.w3,
                hdr.h.ipv4_o8.w4, hdr.h.ipv4_o8.w5, hdr.h.ipv4_o8.w6, hdr.h.ipv4_o8.w7,
                hdr.h.ipv4_o4.w0, hdr.h.ipv4_o4.w1, hdr.h.ipv4_o4.w2, hdr.h.ipv4_o4.w3,
                hdr.h.ipv4_o2.w0, hdr.h.ipv4_o2.w1, hdr.h.ipv4_o1.w0 });
        }
        pkt.emit(hdr.h);   /* the bridged header ends here */
    }
}

Pipeline(MfsIngressParser(), MfsIngress(), MfsIngressDeparser(),
         MfsEgressParser(), MfsEgress(), MfsEgressDeparser()) pipe;

Switch(pipe) main;
