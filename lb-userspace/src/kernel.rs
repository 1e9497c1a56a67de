//! The kernel side: the XDP program with its maps, pins and links, the system calls the
//! daemon makes directly, and the process's file descriptors.
pub mod dataplane;
pub mod fds;
pub mod sys;
