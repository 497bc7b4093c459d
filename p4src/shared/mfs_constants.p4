/* MFS constants shared by p4src/v1model/mfs.p4 and p4src/tna/mfs.p4.
 *
 * These mirror mfs/header.py (header layout), mfs/levels.py (level numbering)
 * and docs/p4-api.md (table sizes, class counter indices).
 * tests/test_header_layout.py parses this file and checks that they agree.
 */
#ifndef MFS_CONSTANTS_P4
#define MFS_CONSTANTS_P4

/* --- MFS header (docs/header.md) --- */
const bit<16> MFS_UDP_PORT      = 19782;   /* 0x4D46, "MF" */
const bit<16> MFS_HEADER_LEN    = 16;      /* bytes */
const bit<16> UDP_HEADER_LEN    = 8;       /* bytes */
const bit<4>  MFS_VERSION       = 1;
const bit<4>  MFS_FLAG_PROPOSED = 0x1;
const bit<4>  MFS_FLAG_LAST     = 0x2;
const bit<4>  MFS_FLAG_MASK     = 0xF;
const bit<8>  MFS_STAGE_KV_REUSE   = 1;
const bit<8>  MFS_STAGE_COLLECTIVE = 2;
const bit<8>  MFS_STAGE_P2D        = 3;
const bit<16> MFS_RLI_UNKNOWN   = 0xFFFF;

/* --- levels (mfs/levels.py): level 0 is the highest priority --- */
const bit<8>  NUM_QUEUES   = 8;
const bit<8>  LOWEST_LEVEL = 7;

/* --- class_counter indices (docs/p4-api.md, classification table) --- */
const bit<32> CLASS_FLOW_TABLE    = 0;
const bit<32> CLASS_STAGE_DEFAULT = 1;
const bit<32> CLASS_PROPOSAL      = 2;
const bit<32> CLASS_MFS_BEST_EFFORT = 3;
const bit<32> CLASS_TRUSTED_DSCP  = 4;
const bit<32> CLASS_BEST_EFFORT   = 5;
const bit<32> CLASS_MALFORMED     = 6;
const bit<32> CLASS_PROPOSAL_REJECTED = 7;
const bit<32> CLASS_FABRIC_DSCP   = 8;
const bit<32> CLASS_FABRIC_BEST_EFFORT = 9;
const bit<32> CLASS_CONTROLLER_OP = 10;   /* a packet_out from the controller, applied */
#define CLASS_COUNTER_SIZE 16

/* --- drop_counter indices (docs/p4-api.md) --- */
const bit<32> DROP_BAD_IPV4      = 0;   /* version != 4 or IHL < 5 */
const bit<32> DROP_IPV4_CHECKSUM = 1;
const bit<32> DROP_TTL_EXPIRED   = 2;
const bit<32> DROP_ROUTE_DROP    = 3;
#define DROP_COUNTER_SIZE 8

/* --- per (port, level) statistics: index egress_port * 8 + level (full 9-bit port) --- */
#define STAT_PORTS 512
#define QUEUE_STATS_SIZE 4096

/* --- unknown-flow digest filter: one cell per filter_index (12 bits) --- */
#define MISS_FILTER_SIZE 4096

/* --- controller operations (packet_out header cpu_out_h, docs/p4-api.md) --- */
const bit<8>  CPU_OP_CLEAR_MISS_FILTER = 1;   /* miss_filter[index] := 0 */
#ifndef MFS_TNA
/* v1model / embedded: simple_switch_grpc --cpu-port 510 (9 bits, not 0, not the drop port 511) */
const bit<9>  CPU_PORT = 510;
#endif

/* --- multicast --- */
const bit<16> FLOOD_MCAST_GROUP = 1;

/* --- table sizes (docs/p4-api.md) --- */
#define IPV4_LPM_SIZE          2048   /* 256 servers x 8 GPUs */
#define L2_FWD_SIZE            1024
#define MFS_FLOW_SIZE          4096
#define MFS_STAGE_DEFAULT_SIZE 64
#define MFS_TRUST_SIZE         256
#define DSCP_CLASSIFY_SIZE     512
#define CLASSIFY_DEFAULT_SIZE  1
#define DSCP_REWRITE_SIZE      512
#define LEVEL_DSCP_SIZE        8
#define PORT_MODE_SIZE         512
#define ROUTER_MAC_SIZE        64
#define DSCP_TRUST_SIZE        64

/* --- other protocol numbers --- */
const bit<16> ETHERTYPE_IPV4 = 0x0800;
const bit<16> ETHERTYPE_ARP  = 0x0806;
const bit<16> ETHERTYPE_VLAN = 0x8100;   /* 802.1Q */
const bit<16> ETHERTYPE_QINQ = 0x88a8;   /* 802.1ad service tag */
const bit<8>  IP_PROTO_TCP   = 6;
const bit<8>  IP_PROTO_UDP   = 17;

#endif
