module meshless.local/bench/noopwebhook

go 1.22
