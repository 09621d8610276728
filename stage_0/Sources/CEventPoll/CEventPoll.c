// The epoll calls the event relay (and stage 3's pool) need; see include/CEventPoll.h.
#include "CEventPoll.h"

#ifdef __linux__
#include <stddef.h>
#include <sys/epoll.h>

int cep_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int cep_add(int epfd, int fd, uint64_t token) {
    struct epoll_event event = {.events = EPOLLIN | EPOLLPRI | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u64 = token};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event);
}

int cep_remove(int epfd, int fd) { return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL); }

int cep_wait(int epfd, struct cep_event *events, int capacity, int timeout_ms) {
    struct epoll_event ready[256];
    int count = epoll_wait(epfd, ready, capacity < 256 ? capacity : 256, timeout_ms);
    for (int i = 0; i < count; i++) {
        events[i].events = ready[i].events;
        events[i].token = ready[i].data.u64;
    }
    return count;
}
#else
#include <errno.h>
int cep_create(void) { errno = ENOSYS; return -1; }
int cep_add(int epfd, int fd, uint64_t token) { (void)epfd; (void)fd; (void)token; errno = ENOSYS; return -1; }
int cep_remove(int epfd, int fd) { (void)epfd; (void)fd; errno = ENOSYS; return -1; }
int cep_wait(int epfd, struct cep_event *events, int capacity, int timeout_ms) {
    (void)epfd; (void)events; (void)capacity; (void)timeout_ms; errno = ENOSYS; return -1;
}
#endif
