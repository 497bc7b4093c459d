/* Target-neutral pieces of MfsIngress / MfsEgress: MFS header validation,
 * classification (docs/p4-api.md, "first that applies wins") and the egress
 * DSCP rewrite. Both programs apply these controls; names are absolute so the
 * P4Info names are those of docs/p4-api.md whatever the enclosing control is.
 */
#ifndef MFS_CLASSIFY_P4
#define MFS_CLASSIFY_P4

#include "headers.p4"

/* mfs_ok := a complete header to MFS_UDP_PORT with ver 1 and stage 1..3 whose
 * IPv4 total_len is IHL*4 + the UDP length. parser_ok is false when the
 * target's parser reported an error. */
control MfsValidate(in headers_t hdr, inout mfs_meta_t meta, in bool parser_ok) {
#ifdef MFS_TNA
    /* Tofino: a gateway compares with constants, not with a sum, and an
     * action does one dependent operation per stage. So: len_diff =
     * total_len - udp.length (an action), += -IHL*4 from a constant table on
     * IHL (action data), then the gateway tests len_diff == 0. len_diff is
     * metadata, not a local: the mid end folds locals back into one expression. */
    @hidden action minus_ihl_bytes(bit<16> neg_bytes) {
        meta.len_diff = meta.len_diff + neg_bytes;
    }
    @hidden table ihl_bytes {
        key = { hdr.ipv4.ihl : exact @name("ihl"); }
        actions = { minus_ihl_bytes; @defaultonly NoAction; }
        const entries = {
            5 : minus_ihl_bytes(16w0 - 20);  6 : minus_ihl_bytes(16w0 - 24);
            7 : minus_ihl_bytes(16w0 - 28);  8 : minus_ihl_bytes(16w0 - 32);
            9 : minus_ihl_bytes(16w0 - 36); 10 : minus_ihl_bytes(16w0 - 40);
            11 : minus_ihl_bytes(16w0 - 44); 12 : minus_ihl_bytes(16w0 - 48);
            13 : minus_ihl_bytes(16w0 - 52); 14 : minus_ihl_bytes(16w0 - 56);
            15 : minus_ihl_bytes(16w0 - 60);
        }
        const default_action = NoAction();   /* IHL < 5: dropped by the ingress */
        size = 16;
    }
#endif
    apply {
        meta.mfs_ok = false;
        if (meta.mfs_port && parser_ok && hdr.mfs.isValid()) {
#ifdef MFS_TNA
            meta.len_diff = hdr.ipv4.total_len - hdr.udp.length;
            ihl_bytes.apply();
#endif
            if (hdr.mfs.ver == MFS_VERSION &&
                (hdr.mfs.stage == MFS_STAGE_KV_REUSE ||
                 hdr.mfs.stage == MFS_STAGE_COLLECTIVE ||
                 hdr.mfs.stage == MFS_STAGE_P2D) &&
#ifdef MFS_TNA
                true) {
                /* a gateway of its own: one gateway matches only so many bits */
                if (meta.len_diff == 0) {
                    meta.mfs_ok = true;
                }
#else
                hdr.ipv4.total_len == (((bit<16>)hdr.ipv4.ihl) << 2) + hdr.udp.length) {
                meta.mfs_ok = true;
#endif
            }
        }
    }
}

#ifdef MFS_TNA
#define MFS_IDLE_TIMEOUT idle_timeout = true;
#else
#define MFS_IDLE_TIMEOUT support_timeout = true;
#endif

/* Sets meta.level (0..7, clamped), meta.cls (class_counter index),
 * meta.filter_index and miss (an edge-port flow-table miss: consult the
 * miss_filter and maybe send the mfs_miss_t digest); the caller counts, filters
 * and digests, because counters, registers and digests are target externs.
 * meta.fabric (the port mode) is set by the caller before. */
control MfsClassify(in headers_t hdr, inout mfs_meta_t meta, in port_t ingress_port,
                    out bool miss, out bool rejected) {
#ifdef MFS_TNA
    Hash<bit<16>>(HashAlgorithm_t.XOR16) filter_hash;
#endif
    @id(0x01000005) @name(".MfsIngress.set_level")
    action set_level(bit<8> level) {
        meta.level = level;
    }
    @id(0x01000006) @name(".MfsIngress.trust_proposal")
    action trust_proposal(bit<8> ceiling) {
        meta.trusted = true;
        meta.ceiling = ceiling;
    }

    @id(0x02000003) @name(".MfsIngress.mfs_flow")
    table mfs_flow {
        key = {
            hdr.mfs.stage     : exact @name("stage");
            hdr.mfs.flow_id   : exact @name("flow_id");
            ingress_port      : exact @name("ingress_port");   /* bound to the source */
            hdr.ipv4.src_addr : exact @name("src_addr");
        }
        actions = { set_level; @defaultonly NoAction; }
        const default_action = NoAction();
        size = MFS_FLOW_SIZE;
        MFS_IDLE_TIMEOUT
    }
    @id(0x02000004) @name(".MfsIngress.mfs_stage_default")
    table mfs_stage_default {
        key = {
            hdr.mfs.stage : exact @name("stage");
            hdr.mfs.rli   : range @name("rli");
        }
        actions = { set_level; @defaultonly NoAction; }
        const default_action = NoAction();
        size = MFS_STAGE_DEFAULT_SIZE;
    }
    @id(0x02000005) @name(".MfsIngress.mfs_trust")
    table mfs_trust {
        key = {
            ingress_port      : exact @name("ingress_port");
            hdr.ipv4.src_addr : exact @name("src_addr");
        }
        actions = { trust_proposal; @defaultonly NoAction; }
        const default_action = NoAction();
        size = MFS_TRUST_SIZE;
    }
    @id(0x02000006) @name(".MfsIngress.dscp_classify")
    table dscp_classify {
        key = {
            ingress_port  : exact @name("ingress_port");
            hdr.ipv4.dscp : exact @name("dscp");
        }
        actions = { set_level; @defaultonly NoAction; }
        const default_action = NoAction();
        size = DSCP_CLASSIFY_SIZE;
    }
    @id(0x0200000a) @name(".MfsIngress.dscp_trust")
    table dscp_trust {
        key = { hdr.ipv4.dscp : exact @name("dscp"); }
        actions = { set_level; @defaultonly NoAction; }
        const default_action = NoAction();
        size = DSCP_TRUST_SIZE;
    }
    @id(0x02000007) @name(".MfsIngress.classify_default")
    table classify_default {
        actions = { set_level; }
        default_action = set_level(LOWEST_LEVEL);
        size = CLASSIFY_DEFAULT_SIZE;
    }

    apply {
        miss = false;
        rejected = false;
        meta.trusted = false;
        meta.use_default = false;
        meta.level = LOWEST_LEVEL;
        meta.filter_index = 0;
        if (meta.fabric) {
            /* fabric port: trust the DSCP the edge marked, MFS or not */
            meta.cls = CLASS_FABRIC_BEST_EFFORT;
            meta.use_default = true;
            if (hdr.ipv4.isValid()) {
                if (dscp_trust.apply().hit) {
                    meta.cls = CLASS_FABRIC_DSCP;
                    meta.use_default = false;
                }
            }
        } else if (meta.mfs_ok) {
            if (mfs_flow.apply().hit) {
                meta.cls = CLASS_FLOW_TABLE;
            } else {
                miss = true;
#ifdef MFS_TNA
                /* the same fold on the hash unit (one XOR per stage otherwise):
                 * XOR16 of the three zero-padded slices */
                meta.filter_index = filter_hash.get({4w0, hdr.mfs.flow_id[11:0],
                                                     4w0, hdr.mfs.flow_id[23:12],
                                                     8w0, hdr.mfs.flow_id[31:24]});
#else
                meta.filter_index = (bit<16>)(hdr.mfs.flow_id[11:0] ^ hdr.mfs.flow_id[23:12] ^
                                              (bit<12>)hdr.mfs.flow_id[31:24]);
#endif
                if ((hdr.mfs.flags & MFS_FLAG_PROPOSED) != 0) {
                    if (!mfs_trust.apply().hit) {
                        rejected = true;   /* class_counter[7], in addition */
                    }
                }
                if (mfs_stage_default.apply().hit) {
                    meta.cls = CLASS_STAGE_DEFAULT;
                } else if (meta.trusted) {
                    meta.cls = CLASS_PROPOSAL;
                    /* never above (numerically below) the ceiling */
#ifdef MFS_TNA
                    meta.level = max(hdr.mfs.proposed, meta.ceiling);
#else
                    if (hdr.mfs.proposed > meta.ceiling) {
                        meta.level = hdr.mfs.proposed;
                    } else {
                        meta.level = meta.ceiling;
                    }
#endif
                } else {
                    meta.cls = CLASS_MFS_BEST_EFFORT;
                    meta.use_default = true;
                }
            }
        } else if (meta.mfs_port) {
            meta.cls = CLASS_MALFORMED;
            meta.use_default = true;
        } else {
            meta.cls = CLASS_BEST_EFFORT;
            meta.use_default = true;
            if (hdr.ipv4.isValid()) {
                if (dscp_classify.apply().hit) {
                    meta.cls = CLASS_TRUSTED_DSCP;
                    meta.use_default = false;
                }
            }
        }
        if (meta.use_default) {
            classify_default.apply();
        }
#ifdef MFS_TNA
        meta.level = min(meta.level, LOWEST_LEVEL);
#else
        if (meta.level > LOWEST_LEVEL) {
            meta.level = LOWEST_LEVEL;
        }
#endif
    }
}

/* Egress DSCP rewrite per port (MFS header bytes are never changed). */
control MfsDscp(inout headers_t hdr, inout mfs_meta_t meta, in port_t egress_port) {
    bool rewrite = false;

    @id(0x01000011) @name(".MfsEgress.rewrite_dscp")
    action rewrite_dscp() {
        rewrite = true;
    }
    @id(0x01000012) @name(".MfsEgress.clear_dscp")
    action clear_dscp() {
        hdr.ipv4.dscp = 0;
        meta.csum = true;
    }
    @id(0x01000013) @name(".MfsEgress.set_dscp")
    action set_dscp(bit<6> dscp) {
        hdr.ipv4.dscp = dscp;
        meta.csum = true;
    }

    @id(0x02000011) @name(".MfsEgress.dscp_rewrite")
    table dscp_rewrite {
        key = { egress_port : exact @name("egress_port"); }
        actions = { rewrite_dscp; clear_dscp; NoAction; }
        default_action = NoAction();
        size = DSCP_REWRITE_SIZE;
    }
    @id(0x02000012) @name(".MfsEgress.level_dscp")
    table level_dscp {
        key = { meta.level : exact @name("level"); }
        actions = { set_dscp; @defaultonly NoAction; }
        default_action = NoAction();
        size = LEVEL_DSCP_SIZE;
    }

    apply {
        if (hdr.ipv4.isValid()) {
            dscp_rewrite.apply();
            if (rewrite) {
                level_dscp.apply();
            }
        }
    }
}

#endif
