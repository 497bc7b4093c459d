/* Shared sub-parser: Ethernet -> up to two VLAN tags -> {ARP, IPv4 [options]
 * -> {TCP, UDP -> MFS}}.
 *
 * Both targets instantiate it from their top-level parser. Truncated or
 * malformed MFS headers never make the packet fail here in a way that
 * loses bytes: the header is extracted only when the UDP length says 16 bytes
 * follow and the packet really has them (if it does not, extract fails, the
 * header stays invalid, and MfsClassify counts the packet as malformed);
 * version/stage/total_len are checked in MfsValidate so that a bad header is
 * still emitted byte for byte.
 *
 * IPv4 with version != 4 or IHL < 5 is not parsed past the fixed header (the
 * ingress drops and counts it). Options (IHL 6..15) are extracted as the
 * ipv4_o8/o4/o2/o1 headers, largest first, then L4 is parsed as without
 * options. On TNA the parser verifies the IPv4 checksum over the whole header
 * (meta.csum_err); v1model verifies it in MfsVerifyChecksum.
 */
#ifndef MFS_PARSER_P4
#define MFS_PARSER_P4

#include "headers.p4"

parser MfsHeaderParser(packet_in pkt, out headers_t hdr, inout mfs_meta_t meta) {
#ifdef MFS_TNA
    Checksum() ipv4_verify;
#endif
    state start {
        pkt.extract(hdr.ethernet);
        transition select(hdr.ethernet.ether_type) {
            ETHERTYPE_VLAN: parse_vlan0;
            ETHERTYPE_QINQ: parse_vlan0;
            ETHERTYPE_IPV4: parse_ipv4;
            ETHERTYPE_ARP:  parse_arp;
            default: accept;
        }
    }
    state parse_vlan0 {
        pkt.extract(hdr.vlan0);
        transition select(hdr.vlan0.ether_type) {
            ETHERTYPE_VLAN: parse_vlan1;
            ETHERTYPE_QINQ: parse_vlan1;
            ETHERTYPE_IPV4: parse_ipv4;
            ETHERTYPE_ARP:  parse_arp;
            default: accept;
        }
    }
    state parse_vlan1 {
        pkt.extract(hdr.vlan1);
        transition select(hdr.vlan1.ether_type) {
            ETHERTYPE_IPV4: parse_ipv4;
            ETHERTYPE_ARP:  parse_arp;
            default: accept;   /* a third tag: not parsed, best effort */
        }
    }
    state parse_arp {
        pkt.extract(hdr.arp);
        transition accept;
    }
    state parse_ipv4 {
        pkt.extract(hdr.ipv4);
#ifdef MFS_TNA
        ipv4_verify.add(hdr.ipv4);
#endif
        transition select(hdr.ipv4.version, hdr.ipv4.ihl) {
            (4, 5):  parse_ipv4_end;
            (4, 6):  parse_ipv4_o1;
            (4, 7):  parse_ipv4_o2;
            (4, 8):  parse_ipv4_o2;
            (4, 9):  parse_ipv4_o4;
            (4, 10): parse_ipv4_o4;
            (4, 11): parse_ipv4_o4;
            (4, 12): parse_ipv4_o4;
            (4, 13): parse_ipv4_o8;
            (4, 14): parse_ipv4_o8;
            (4, 15): parse_ipv4_o8;
            default: accept;   /* version != 4 or IHL < 5: dropped in ingress */
        }
    }
    /* IHL - 5 option words = 8a + 4b + 2c + d, extracted in that order */
    state parse_ipv4_o8 {
        pkt.extract(hdr.ipv4_o8);
#ifdef MFS_TNA
        ipv4_verify.add(hdr.ipv4_o8);
#endif
        transition select(hdr.ipv4.ihl) {
            14: parse_ipv4_o1;
            15: parse_ipv4_o2;
            default: parse_ipv4_end;
        }
    }
    state parse_ipv4_o4 {
        pkt.extract(hdr.ipv4_o4);
#ifdef MFS_TNA
        ipv4_verify.add(hdr.ipv4_o4);
#endif
        transition select(hdr.ipv4.ihl) {
            10: parse_ipv4_o1;
            11: parse_ipv4_o2;
            12: parse_ipv4_o2;
            default: parse_ipv4_end;
        }
    }
    state parse_ipv4_o2 {
        pkt.extract(hdr.ipv4_o2);
#ifdef MFS_TNA
        ipv4_verify.add(hdr.ipv4_o2);
#endif
        transition select(hdr.ipv4.ihl) {
            8:  parse_ipv4_o1;
            12: parse_ipv4_o1;
            default: parse_ipv4_end;
        }
    }
    state parse_ipv4_o1 {
        pkt.extract(hdr.ipv4_o1);
#ifdef MFS_TNA
        ipv4_verify.add(hdr.ipv4_o1);
#endif
        transition parse_ipv4_end;
    }
    state parse_ipv4_end {
#ifdef MFS_TNA
        meta.csum_err = ipv4_verify.verify();   /* true: the checksum is wrong */
#endif
        /* L4 only for the first fragment */
        transition select(hdr.ipv4.frag_offset, hdr.ipv4.protocol) {
            (0, IP_PROTO_UDP): parse_udp;
            (0, IP_PROTO_TCP): parse_tcp;
            default: accept;
        }
    }
    state parse_tcp {
        pkt.extract(hdr.tcp);
        transition accept;
    }
    state parse_udp {
        pkt.extract(hdr.udp);
        transition select(hdr.udp.dst_port) {
            MFS_UDP_PORT: parse_mfs_port;
            default: accept;
        }
    }
    state parse_mfs_port {
        meta.mfs_port = true;
        /* UDP length 8..23: fewer than 16 bytes follow (Ethernet padding may
         * still be there, so do not trust the frame length alone). */
        transition select(hdr.udp.length[15:5], hdr.udp.length[4:3]) {
            (0, 0): accept;      /* 0..7  */
            (0, 1): accept;      /* 8..15 */
            (0, 2): accept;      /* 16..23 */
            default: parse_mfs;  /* >= 24 */
        }
    }
    state parse_mfs {
        pkt.extract(hdr.mfs);
        transition accept;
    }
}

#endif
