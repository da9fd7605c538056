{{/* Names, labels and the pieces several templates share. */}}

{{- define "searchtune-serving.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "searchtune-serving.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "searchtune-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "searchtune-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "searchtune-serving.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "searchtune-serving.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: embeddings
app.kubernetes.io/part-of: searchtune
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The helm test pod's: none of the selector's pairs, so neither the Service nor the PDB takes it for a server. */}}
{{- define "searchtune-serving.testLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "searchtune-serving.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: helm-test
app.kubernetes.io/part-of: searchtune
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "searchtune-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "searchtune-serving.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image, by digest when one is given. */}}
{{- define "searchtune-serving.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (required "image.tag or image.digest is required" .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "searchtune-serving.modelPath" -}}
{{- printf "/models/%s" .Values.model.name -}}
{{- end -}}

{{/*
Checks across values that values.schema.json cannot express; each fails the install with
one line naming the values involved.
*/}}
{{- define "searchtune-serving.validate" -}}
{{- $uri := required "model.uri is required: the s3://bucket/prefix/model/ folder the pipeline wrote (helm install --set model.uri=s3://...)" .Values.model.uri -}}
{{- if and (gt (int .Values.resources.gpu) 0) (gt (int .Values.sglang.tp) (int .Values.resources.gpu)) -}}
{{- fail (printf "sglang.tp=%d needs at least %d GPUs per pod, but resources.gpu=%d" (int .Values.sglang.tp) (int .Values.sglang.tp) (int .Values.resources.gpu)) -}}
{{- end -}}
{{- if not .Values.model.allowIncompatibleProfile -}}
{{- if ne .Values.model.pooling "cls" -}}
{{- fail (printf "model.pooling=%s: SGLang's BERT/XLM-R embedding path pools the CLS token only, so this model would serve different vectors than it was trained with; serve it with another engine, or set model.allowIncompatibleProfile=true to serve it anyway" .Values.model.pooling) -}}
{{- end -}}
{{- if not .Values.model.normalize -}}
{{- fail "model.normalize=false: SGLang's BERT/XLM-R embedding path always L2-normalizes, so inner products would differ from training; set model.allowIncompatibleProfile=true to serve it anyway" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.apiKey.enabled (not .Values.apiKey.secretName) -}}
{{- fail "apiKey.enabled=true needs apiKey.secretName: an existing Secret holding the key under apiKey.secretKey" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail (printf "autoscaling.minReplicas=%d is above autoscaling.maxReplicas=%d" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.allowedPodLabels) (not .Values.networkPolicy.allowedNamespaceLabels) -}}
{{- fail "networkPolicy.enabled=true needs networkPolicy.allowedPodLabels or networkPolicy.allowedNamespaceLabels: with neither, no client could reach the server" -}}
{{- end -}}
{{- range .Values.sglang.extraArgs -}}
{{- $flag := (splitList "=" (toString .)) | first -}}
{{- if has $flag (list "--model-path" "--model" "--host" "--port" "--api-key" "--is-embedding" "--served-model-name" "--tp" "--tp-size" "--dtype") -}}
{{- fail (printf "sglang.extraArgs: %s is the chart's own (model.*, sglang.*, apiKey.*: an API key belongs in a Secret, never in the values)" $flag) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.ingress.enabled .Values.ingress.tls.enabled (not .Values.ingress.tls.secretName) -}}
{{- fail "ingress.tls.enabled=true needs ingress.tls.secretName" -}}
{{- end -}}
{{- end -}}

{{/* SGLang's command line: python3 -m sglang.launch_server <these>. */}}
{{- define "searchtune-serving.sglangArgs" -}}
- --model-path
- {{ include "searchtune-serving.modelPath" . | quote }}
- --is-embedding
- --served-model-name
- {{ .Values.model.name | quote }}
- --host
- "0.0.0.0"
- --port
- {{ .Values.sglang.port | quote }}
- --enable-metrics
- --tp
- {{ .Values.sglang.tp | quote }}
- --dtype
- {{ .Values.sglang.dtype | quote }}
{{- if not (kindIs "invalid" .Values.sglang.memFractionStatic) }}
- --mem-fraction-static
- {{ .Values.sglang.memFractionStatic | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.sglang.contextLength) }}
- --context-length
- {{ .Values.sglang.contextLength | int | toString | quote }}
{{- end }}
{{- if .Values.sglang.attentionBackend }}
- --attention-backend
- {{ .Values.sglang.attentionBackend | quote }}
{{- end }}
{{- if .Values.apiKey.enabled }}
- --api-key
# Kubernetes expands $(SGLANG_API_KEY) from the container's env (a secretKeyRef): the key is
# never in the Deployment.
- "$(SGLANG_API_KEY)"
{{- end }}
{{- range .Values.sglang.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
checkov findings this chart accepts, as checkov.io/skip annotations, each with its reason.
Only the ones that apply to the values given are emitted.
*/}}
{{- define "searchtune-serving.checkovSkips" -}}
{{- $skips := list -}}
{{- $skips = append $skips "CKV_K8S_35=boto3 reads the S3 keys and the API key reaches SGLang --api-key from environment variables set by secretKeyRef; neither reads them from files" -}}
{{- if ne .Values.image.pullPolicy "Always" -}}
{{- $skips = append $skips "CKV_K8S_15=the image is several GB and pinned by digest in production so IfNotPresent cannot serve a stale image; set image.pullPolicy to Always to change it" -}}
{{- end -}}
{{- if not .Values.image.digest -}}
{{- $skips = append $skips "CKV_K8S_43=image.digest is empty so the tag is used; set image.digest to pin the image by digest" -}}
{{- end -}}
{{- range $index, $skip := $skips }}
checkov.io/skip{{ add1 $index }}: {{ $skip | quote }}
{{- end }}
{{- end -}}
