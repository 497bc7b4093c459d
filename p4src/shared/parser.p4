/* Shared sub-parser: Ethernet -> {ARP, IPv4 -> {TCP, UDP -> MFS}}.
 *
 * Both targets instantiate it from their top-level parser. Truncated or
 * malformed MFS headers never make the packet fail here in a way that
 * loses bytes: the header is extracted only when the UDP length says 16 bytes
 * follow and the packet really has them (if it does not, extract fails, the
 * header stays invalid, and MfsClassify counts the packet as malformed);
 * version/stage are checked in MfsValidate so that a bad header is still
 * emitted byte for byte.
 */
#ifndef MFS_PARSER_P4
#define MFS_PARSER_P4

#include "headers.p4"

parser MfsHeaderParser(packet_in pkt, out headers_t hdr, inout mfs_meta_t meta) {
    state start {
        pkt.extract(hdr.ethernet);
        transition select(hdr.ethernet.ether_type) {
            ETHERTYPE_IPV4: parse_ipv4;
            ETHERTYPE_ARP:  parse_arp;
            default: accept;
        }
    }
    state parse_arp {
        pkt.extract(hdr.arp);
        transition accept;
    }
    state parse_ipv4 {
        pkt.extract(hdr.ipv4);
        /* L4 only for option-less, unfragmented (first fragment) IPv4. */
        transition select(hdr.ipv4.ihl, hdr.ipv4.frag_offset, hdr.ipv4.protocol) {
            (5, 0, IP_PROTO_UDP): parse_udp;
            (5, 0, IP_PROTO_TCP): parse_tcp;
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
