// @billd/client: a typed client of billd's HTTP API.
export { Billd } from "./client.js";
export { BilldError } from "./core.js";
