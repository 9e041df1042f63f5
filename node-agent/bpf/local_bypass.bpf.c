// SPDX-License-Identifier: MIT OR GPL-2.0
//
// weft's local-leg bypass (docs/design.md §7, "Local-leg bypass").
//
// In an enrolled pod both ends of a captured connection's local leg are
// sockets of the pod's network namespace: the application's and ztunnel's
// (outbound: the application's connect, redirected to ztunnel's 15001;
// inbound: ztunnel's source-preserving connect to the application). This
// program pairs the two sockets of such a leg when they are established and
// then moves every byte one of them sends straight into the other's receive
// queue, so the leg skips TCP/IP, conntrack and nftables. ztunnel still
// reads and writes every byte, so its policy, metrics and access log are
// unchanged; only the kernel work between the two sockets goes away.
//
// Pairing. REDIRECT rewrites the destination of the outbound leg, so the
// two sockets' 4-tuples do not mirror each other; what both sides do share
// is the connecting side's endpoint and the two initial sequence numbers.
// A socket's key is (netns cookie, the active side's address and port, the
// active side's next sequence number at establishment, the passive side's,
// role). The 64 bits of sequence numbers tell apart sockets that share an
// endpoint (Linux reuses a source port across destinations), so a socket is
// only ever paired with the other end of its own connection.
//
// Ordering. A socket decides on its first send whether its bytes take the
// bypass, and never changes its mind: a socket that has sent over TCP keeps
// sending over TCP, because bytes queued by the bypass are read before bytes
// still in the peer's TCP receive queue.

#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define AF_INET6 10

// ztunnel's in-pod ports whose connections have no local peer.
#define PORT_INBOUND_PLAINTEXT 15006
#define PORT_HBONE 15008

enum role { ROLE_ACTIVE = 0, ROLE_PASSIVE = 1 };

enum mode { MODE_UNDECIDED = 0, MODE_BYPASS = 1, MODE_TCP = 2 };

// Indices of `counters`; the loader reads them by these numbers.
enum counter {
	BYPASSED_BYTES = 0,
	BYPASSED_SENDS = 1,
	PAIRED_LEGS = 2,
	FIRST_SEND_OVER_TCP = 3,
	COUNTERS = 4,
};

struct leg_key {
	__u64 netns;
	__u32 addr[4];
	__u32 port;
	__u32 active_seq;
	__u32 passive_seq;
	__u32 role;
};

struct leg_state {
	struct leg_key peer;
	__u32 mode;
	__u32 reserved;
};

// Network namespace cookies of the enrolled pods (written by the agent).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u32);
} pods SEC(".maps");

// Every socket that may take the bypass, by its own key.
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 262144);
	__type(key, struct leg_key);
	__type(value, __u32);
} legs SEC(".maps");

// Active sockets put in `legs`: a passive socket joins only if its peer is
// here. LRU, so entries of closed sockets age out without a close hook.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct leg_key);
	__type(value, __u8);
} actives SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct leg_state);
} state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 index, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &index);
	if (c)
		*c += n;
}

static __always_inline int is_loopback(struct bpf_sock_ops *skops)
{
	if (skops->family == AF_INET)
		return (bpf_ntohl(skops->remote_ip4) >> 24) == 127;
	return skops->remote_ip6[0] == 0 && skops->remote_ip6[1] == 0 &&
	       skops->remote_ip6[2] == 0 && skops->remote_ip6[3] == bpf_htonl(1);
}

SEC("sockops")
int weft_local_bypass_sockops(struct bpf_sock_ops *skops)
{
	__u32 active;
	if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		active = 1;
	else if (skops->op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		active = 0;
	else
		return 1;
	if (skops->family != AF_INET && skops->family != AF_INET6)
		return 1;
	__u64 netns = bpf_get_netns_cookie(skops);
	if (!bpf_map_lookup_elem(&pods, &netns))
		return 1;
	// Data in the SYN (TCP Fast Open) already went over TCP.
	if (skops->data_segs_in || skops->data_segs_out)
		return 1;

	__u32 remote_port = bpf_ntohl(skops->remote_port);
	struct leg_key self = {};
	self.netns = netns;
	if (active) {
		// ztunnel's tunnels to other nodes, and loopback connections
		// inside the pod, never have a captured local peer.
		if (remote_port == PORT_HBONE || is_loopback(skops))
			return 1;
		if (skops->family == AF_INET) {
			self.addr[0] = skops->local_ip4;
		} else {
			self.addr[0] = skops->local_ip6[0];
			self.addr[1] = skops->local_ip6[1];
			self.addr[2] = skops->local_ip6[2];
			self.addr[3] = skops->local_ip6[3];
		}
		self.port = skops->local_port;
		self.active_seq = skops->snd_nxt;
		self.passive_seq = skops->rcv_nxt;
		self.role = ROLE_ACTIVE;
	} else {
		if (skops->local_port == PORT_HBONE ||
		    skops->local_port == PORT_INBOUND_PLAINTEXT)
			return 1;
		if (skops->family == AF_INET) {
			self.addr[0] = skops->remote_ip4;
		} else {
			self.addr[0] = skops->remote_ip6[0];
			self.addr[1] = skops->remote_ip6[1];
			self.addr[2] = skops->remote_ip6[2];
			self.addr[3] = skops->remote_ip6[3];
		}
		self.port = remote_port;
		self.active_seq = skops->rcv_nxt;
		self.passive_seq = skops->snd_nxt;
		self.role = ROLE_PASSIVE;
	}

	struct leg_key peer = self;
	peer.role = self.role ^ 1;
	// The active side is established first: a passive socket whose peer
	// was not put in `legs` is not a local leg.
	if (!active && !bpf_map_lookup_elem(&actives, &peer))
		return 1;

	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 1;
	struct leg_state *st =
		bpf_sk_storage_get(&state, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return 1;
	st->peer = peer;
	st->mode = MODE_UNDECIDED;
	if (bpf_sock_hash_update(skops, &legs, &self, BPF_NOEXIST) != 0)
		return 1;
	if (active) {
		__u8 present = 1;
		bpf_map_update_elem(&actives, &self, &present, BPF_ANY);
	} else {
		count(PAIRED_LEGS, 1);
	}
	return 1;
}

SEC("sk_msg")
int weft_local_bypass_sk_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	if (!sk)
		return SK_PASS;
	struct leg_state *st = bpf_sk_storage_get(&state, sk, 0, 0);
	if (!st || st->mode == MODE_TCP)
		return SK_PASS;
	long verdict = bpf_msg_redirect_hash(msg, &legs, &st->peer, BPF_F_INGRESS);
	if (st->mode == MODE_UNDECIDED) {
		if (verdict != SK_PASS) {
			// No peer at the first send: this socket stays on TCP.
			st->mode = MODE_TCP;
			count(FIRST_SEND_OVER_TCP, 1);
			return SK_PASS;
		}
		st->mode = MODE_BYPASS;
	}
	if (verdict == SK_PASS) {
		count(BYPASSED_BYTES, msg->size);
		count(BYPASSED_SENDS, 1);
	}
	// A bypassed socket whose peer has closed gets an error, as TCP would.
	return verdict;
}

char _license[] SEC("license") = "Dual MIT/GPL";
