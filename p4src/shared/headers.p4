/* Header and metadata types shared by the v1model and TNA programs.
 * The MFS header layout is the one of docs/header.md / mfs/header.py.
 */
#ifndef MFS_HEADERS_P4
#define MFS_HEADERS_P4

#include "mfs_constants.p4"

typedef bit<48> mac_addr_t;
typedef bit<32> ipv4_addr_t;
#ifdef MFS_TNA
/* Stratum translates P4Runtime (SDN) port numbers to Tofino dev_ports for
 * fields of this type; the P4Info shows it as a 32-bit "tna/PortId_t". */
@p4runtime_translation("tna/PortId_t", 32)
type bit<9> port_t;
#else
typedef bit<9>  port_t;   /* P4Runtime port width (v1model, embedded) */
#endif

header ethernet_h {
    mac_addr_t dst_addr;
    mac_addr_t src_addr;
    bit<16>    ether_type;
}

/* 802.1Q / 802.1ad tag (after the Ethernet addresses; ether_type is the next one) */
header vlan_h {
    bit<3>  pcp;
    bit<1>  dei;
    bit<12> vid;
    bit<16> ether_type;
}

header arp_h {
    bit<16>     htype;
    bit<16>     ptype;
    bit<8>      hlen;
    bit<8>      plen;
    bit<16>     oper;
    mac_addr_t  sha;
    ipv4_addr_t spa;
    mac_addr_t  tha;
    ipv4_addr_t tpa;
}

header ipv4_h {
    bit<4>      version;
    bit<4>      ihl;
    bit<6>      dscp;
    bit<2>      ecn;
    bit<16>     total_len;
    bit<16>     identification;
    bit<3>      flags;
    bit<13>     frag_offset;
    bit<8>      ttl;
    bit<8>      protocol;
    bit<16>     hdr_checksum;
    ipv4_addr_t src_addr;
    ipv4_addr_t dst_addr;
}

/* IPv4 options (IHL 6..15 = 1..10 words) are extracted as at most one of each
 * of these, largest first, so any length is a sum of them (docs/p4-api.md). */
header ipv4_opt1_h { bit<32> w0; }
header ipv4_opt2_h { bit<32> w0; bit<32> w1; }
header ipv4_opt4_h { bit<32> w0; bit<32> w1; bit<32> w2; bit<32> w3; }
header ipv4_opt8_h {
    bit<32> w0; bit<32> w1; bit<32> w2; bit<32> w3;
    bit<32> w4; bit<32> w5; bit<32> w6; bit<32> w7;
}

header tcp_h {
    bit<16> src_port;
    bit<16> dst_port;
    bit<32> seq_no;
    bit<32> ack_no;
    bit<4>  data_offset;
    bit<4>  res;
    bit<8>  flags;
    bit<16> window;
    bit<16> checksum;
    bit<16> urgent_ptr;
}

header udp_h {
    bit<16> src_port;
    bit<16> dst_port;
    bit<16> length;
    bit<16> checksum;
}

/* The MFS shim header, 16 bytes, right after UDP to MFS_UDP_PORT. */
header mfs_h {
    bit<4>  ver;
    bit<4>  flags;
    bit<8>  stage;
    bit<8>  proposed;
    bit<8>  reserved;
    bit<32> flow_id;
    bit<32> request_id;
    bit<16> target_layer;
    bit<16> rli;
}

/* A controller operation, sent as a P4Runtime PacketOut: the switch's P4Runtime
 * server prepends this header (P4Info controller_packet_metadata "packet_out")
 * and injects the packet on the CPU port, the only port it is parsed on. The
 * ingress applies the operation and drops the packet (docs/p4-api.md). */
@controller_header("packet_out")
header cpu_out_h {
    bit<8>  op;        /* CPU_OP_*; other values: no operation */
    bit<8>  reserved;
    bit<16> index;     /* CPU_OP_CLEAR_MISS_FILTER: the miss_filter cell */
}

struct headers_t {
    cpu_out_h   cpu_out;   /* only from the CPU port */
    ethernet_h  ethernet;
    vlan_h      vlan0;
    vlan_h      vlan1;
    arp_h       arp;
    ipv4_h      ipv4;
    ipv4_opt8_h ipv4_o8;
    ipv4_opt4_h ipv4_o4;
    ipv4_opt2_h ipv4_o2;
    ipv4_opt1_h ipv4_o1;
    tcp_h      tcp;
    udp_h      udp;
    mfs_h      mfs;
}

/* Digest sent on an mfs_flow miss (P4Info digest name "mfs_miss_t"). */
struct mfs_miss_t {
    bit<8>  stage;
    bit<32> flow_id;
    bit<32> request_id;
    bit<32> src_addr;
    port_t  ingress_port;
    bit<16> filter_index;   /* miss_filter cell; the controller clears it */
}

/* Classification state, written by MfsClassify and read by both targets. */
struct mfs_meta_t {
    bool    fabric;       /* ingress port is a fabric port: trust DSCP */
    bool    routable;     /* router_mac said the Ethernet destination is ours */
    bool    csum_err;     /* TNA: the parser's IPv4 checksum verification failed */
    bool    mfs_port;     /* UDP dst port was MFS_UDP_PORT */
    bool    mfs_ok;       /* a well-formed MFS header is present */
    bool    trusted;      /* mfs_trust hit for (ingress port, src IP) */
    bool    use_default;  /* take the level from classify_default */
    bool    flood;        /* replicated by the flood group */
    bool    csum;         /* the IPv4 header changed: update the checksum */
    bit<8>  level;        /* chosen level, 0 = highest */
    bit<8>  ceiling;      /* trust_proposal ceiling */
    bit<32> cls;          /* class_counter index */
    bit<16> filter_index; /* miss_filter cell of this flow id */
#ifdef MFS_TNA
    bit<16> len_diff;     /* MfsValidate's total_len check, step by step */
#endif
}

#endif
