/** Every error the SDK rejects with or reports. */
export class ParleyError extends Error {
    name = "ParleyError";
    /** An edge error code, or one of the SDK's own. */
    code;
    /** The WebSocket close code, when a close ended the client. */
    closeCode;
    constructor(code, message, closeCode) {
        super(message);
        this.code = code;
        this.closeCode = closeCode;
    }
}
