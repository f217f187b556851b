//! Warming the image cache at start-up from the pods that already exist
//! (`images.warm_up_pods`): after a restart or an upgrade of the webhook, the
//! next pod of an image the cluster already runs is answered from the cache
//! instead of spending its review's budget on the registry.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube_hardener_engine::{Context, Policy};
use kube_hardener_images::Resolver;
use serde_json::Value;

use crate::namespaces::NamespaceSource;

/// Pods asked for per list call.
const PAGE: usize = 500;
/// How long one list call may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(30);

/// What warming up needs from the running webhook.
pub(crate) struct WarmUp {
    pub client: kube::Client,
    pub resolver: Resolver,
    pub policy: Policy,
    pub namespaces: NamespaceSource,
    pub max_pods: usize,
}

/// How far a warm-up got.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Warmed {
    pub pods: usize,
    pub lookups: usize,
}

impl std::fmt::Debug for WarmUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmUp")
            .field("max_pods", &self.max_pods)
            .finish_non_exhaustive()
    }
}

impl WarmUp {
    /// Lists up to `max_pods` pods, in pages, and starts one background
    /// lookup per image not cached yet (the resolver's
    /// `images.concurrent_lookups` bounds how many run at once). Never fails
    /// the webhook: an error ends the warm-up with a log line.
    pub(crate) async fn run(self) -> Warmed {
        let api: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &ApiResource::erase::<Pod>(&()));
        let mut warmed = Warmed::default();
        let mut seen = HashSet::new();
        let mut next: Option<String> = None;
        while warmed.pods < self.max_pods {
            let mut params = ListParams::default()
                .limit(u32::try_from((self.max_pods - warmed.pods).min(PAGE)).unwrap_or(u32::MAX));
            if let Some(token) = &next {
                params = params.continue_token(token);
            }
            let list = match tokio::time::timeout(LIST_TIMEOUT, api.list(&params)).await {
                Ok(Ok(list)) => list,
                Ok(Err(error)) => {
                    tracing::warn!(%error, pods = warmed.pods, "image cache warm-up: cannot list pods; stopped");
                    break;
                }
                Err(_) => {
                    tracing::warn!(
                        pods = warmed.pods,
                        "image cache warm-up: listing pods timed out; stopped"
                    );
                    break;
                }
            };
            for pod in list.items.iter().take(self.max_pods - warmed.pods) {
                warmed.pods += 1;
                let Ok(value) = serde_json::to_value(pod) else {
                    continue;
                };
                let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
                let lookup = self.namespaces.lookup(namespace).await;
                for (image, arch) in
                    images_of(&value, namespace, lookup.annotations(), &self.policy)
                {
                    if seen.insert((image.clone(), arch.clone()))
                        && self.resolver.prefetch(&image, arch.as_deref())
                    {
                        warmed.lookups += 1;
                    }
                }
            }
            next = list.metadata.continue_.filter(|token| !token.is_empty());
            if next.is_none() {
                break;
            }
        }
        tracing::info!(
            pods = warmed.pods,
            lookups = warmed.lookups,
            "image cache warm-up: lookups started for the images of existing pods"
        );
        warmed
    }
}

/// The images (and pinned architecture) a new pod like `pod` (a Pod, with or
/// without its `kind`) would have
/// looked up at admission. An existing pod may carry what an earlier
/// hardening added (`runAsNonRoot`, an image's `runAsUser`), which would hide
/// its images from the engine's query, so those fields are taken out first:
/// at worst a container whose own spec sets `runAsUser` is looked up for
/// nothing. Namespace exclusions, opt-outs and switched-off settings still
/// decide, as at admission.
pub(crate) fn images_of(
    pod: &Value,
    namespace: &str,
    annotations: Option<&BTreeMap<String, String>>,
    policy: &Policy,
) -> Vec<(String, Option<String>)> {
    let mut pod = pod.clone();
    // The items of a list carry no `kind`.
    if let Value::Object(object) = &mut pod {
        object.insert("kind".to_owned(), Value::from("Pod"));
    }
    if let Some(spec) = pod.get_mut("spec") {
        forget_users(spec.get_mut("securityContext"));
        for list in ["containers", "initContainers"] {
            if let Some(Value::Array(containers)) = spec.get_mut(list) {
                for container in containers {
                    forget_users(container.get_mut("securityContext"));
                }
            }
        }
    }
    let ctx = Context {
        namespace: (!namespace.is_empty()).then_some(namespace),
        namespace_annotations: annotations,
        images: None,
    };
    match kube_hardener_engine::image_query(&pod, &ctx, policy) {
        Ok(query) => query
            .images
            .into_iter()
            .map(|image| (image, query.arch.clone()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn forget_users(security_context: Option<&mut Value>) {
    if let Some(Value::Object(context)) = security_context {
        context.remove("runAsNonRoot");
        context.remove("runAsUser");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> Policy {
        kube_hardener_config::Config::default()
            .effective_policy(kube_hardener_config::EntryPoint::Webhook)
    }

    #[test]
    fn hardened_pods_still_name_their_images_and_opt_outs_still_count() {
        // As a list's item: no kind, no apiVersion.
        let hardened = json!({
            "metadata": {"name": "p", "namespace": "team",
                         "annotations": {"kube-hardener.io/applied": "runAsNonRoot,runAsUser"}},
            "spec": {
                "nodeSelector": {"kubernetes.io/arch": "arm64"},
                "securityContext": {"runAsNonRoot": true},
                "initContainers": [{"name": "init", "image": "reg.example/init:1",
                                    "securityContext": {"runAsUser": 10001}}],
                "containers": [
                    {"name": "app", "image": "reg.example/app:1",
                     "securityContext": {"runAsNonRoot": true, "runAsUser": 10001}},
                    {"name": "again", "image": "reg.example/app:1"},
                ],
            },
        });
        let arm = Some("arm64".to_owned());
        assert_eq!(
            images_of(&hardened, "team", None, &policy()),
            vec![
                ("reg.example/app:1".to_owned(), arm.clone()),
                ("reg.example/init:1".to_owned(), arm),
            ]
        );
        let skip_all = BTreeMap::from([("kube-hardener.io/skip".to_owned(), "all".to_owned())]);
        assert_eq!(
            images_of(&hardened, "team", Some(&skip_all), &policy()),
            vec![]
        );
        let skip_non_root = BTreeMap::from([(
            "kube-hardener.io/skip".to_owned(),
            "runAsNonRoot".to_owned(),
        )]);
        assert_eq!(
            images_of(&hardened, "team", Some(&skip_non_root), &policy()),
            vec![]
        );
        assert_eq!(images_of(&hardened, "kube-system", None, &policy()), vec![]);
        assert_eq!(
            images_of(&json!({"kind": "Pod", "spec": 5}), "team", None, &policy()),
            vec![]
        );
        assert_eq!(images_of(&json!([]), "team", None, &policy()), vec![]);
    }
}
