//! The kernel side: the XDP program with its maps, pins and links, the system calls the
//! daemon makes directly, the process's file descriptors, and the kernel versions srvgate
//! needs (`needs`).
pub mod dataplane;
pub mod fds;
pub mod needs;
pub mod sys;
