//! Integration tests on the real test bed (etcd + kube-apiserver + moto),
//! started by `make test` (hack/testbed.sh). One binary so it links once.

mod common;
mod crd;
mod events;
mod follow;
mod hostile;
mod install;
mod leader;
mod provision;
mod proxy;
mod reliability;
mod rollout_discovery;
mod rotation_function;
mod scale;
mod sync;
