// A webhook server that decides nothing, for bench/admission_floor.py: the same two answers as
// bench/noop_webhook.py (POST /mutate allows with a fixed JSONPatch, POST /validate allows), on
// Go's net/http and crypto/tls, the stack most webhooks in the field run on (HTTP/2 when the
// API server offers it). What two webhook calls cost a pod creation on this machine when the
// webhook is neither Python nor doing any work.
//
//	noopwebhook PORT CERT KEY PATCH_FILE
package main

import (
	"encoding/base64"
	"encoding/json"
	"log"
	"net/http"
	"os"
)

type review struct {
	Request struct {
		UID string `json:"uid"`
	} `json:"request"`
}

func answer(patch string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in review
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		response := map[string]any{"uid": in.Request.UID, "allowed": true}
		if patch != "" {
			response["patchType"] = "JSONPatch"
			response["patch"] = patch
		}
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(map[string]any{
			"apiVersion": "admission.k8s.io/v1",
			"kind":       "AdmissionReview",
			"response":   response,
		}); err != nil {
			log.Print(err)
		}
	}
}

func main() {
	if len(os.Args) != 5 {
		log.Fatal("usage: noopwebhook PORT CERT KEY PATCH_FILE")
	}
	port, cert, key, patchFile := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	raw, err := os.ReadFile(patchFile)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /mutate", answer(base64.StdEncoding.EncodeToString(raw)))
	mux.HandleFunc("POST /validate", answer(""))
	log.Fatal(http.ListenAndServeTLS("127.0.0.1:"+port, cert, key, mux))
}
