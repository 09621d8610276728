// epoll for Swift on Linux. Glibc's Swift module does not export <sys/epoll.h>, so the event
// relay (Stage0Pipe/EventRelay.swift) reaches it through these functions. macOS needs
// none of this: Darwin's module exports kqueue, and EventPoll.swift uses it directly.
//
// Why wrappers and not the header alone: `struct epoll_event` is packed on x86-64, and a
// plain struct of our own keeps the Swift side free of layout surprises.
#pragma once
#include <stdint.h>

/// One ready descriptor: what happened to it (the EPOLL* bits below) and the token it was
/// registered with.
struct cep_event {
    uint32_t events;
    uint64_t token;
};

/// What `cep_event.events` may contain (the same bits as EPOLLIN and friends).
enum {
    CEP_READABLE = 0x001,  // EPOLLIN
    CEP_URGENT = 0x002,    // EPOLLPRI: TCP urgent data has arrived
    CEP_WRITABLE = 0x004,  // EPOLLOUT
    CEP_ERROR = 0x008,     // EPOLLERR
    CEP_HANGUP = 0x010,    // EPOLLHUP: both directions ended
    CEP_PEER_DONE = 0x2000 // EPOLLRDHUP: the peer finished sending (FIN)
};

/// `epoll_create1(EPOLL_CLOEXEC)`: -1 and errno on failure (on macOS: -1, ENOSYS).
int cep_create(void);
/// Watches `fd` for reading (and urgent data) and writing, edge-triggered (EPOLLET), tagged with `token`.
int cep_add(int epfd, int fd, uint64_t token);
/// Stops watching `fd` (`EPOLL_CTL_DEL`), before it is handed to another loop.
int cep_remove(int epfd, int fd);
/// `epoll_wait`: fills up to `capacity` (at most 256) events; -1 and errno on failure.
int cep_wait(int epfd, struct cep_event *events, int capacity, int timeout_ms);
