# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'build_apps_disk'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # The Windows build host's counterpart of imaging.vhdx.build_volume_image: a dynamic VHDX with one GPT
    # basic-data partition holding an NTFS volume labelled for the guest, filled with the release tree from
    # the share, then listed (path, size, sha256 of every file) for the manifest. The provider holds the
    # host's mount lock while this runs. The image is built under a .partial name and renamed only when
    # complete; an image already at the path is a read-only release master and is never rebuilt.
    $VhdPath = 'D:\Imaging\builds\apps-2026C3.0.vhdx'
    $SourcePath = '\\fileserver\releases\2026C3.0\apps'
    $Label = 'Apps'
    $SizeGb = [long]20
    $WorkRoot = 'D:\Imaging\tmp'
    $ExpectVersion = '2026C3.0'
    $BasicData = '{ebd0a0a2-b9e5-4433-87c0-68b6b72699c7}'
    if (-not (Test-Path -LiteralPath $VhdPath -PathType Leaf)) {
        if (-not (Test-Path -LiteralPath $SourcePath -PathType Container)) { throw "source folder $SourcePath not found" }
        $VersionFile = Join-Path $SourcePath 'version.txt'
        if (-not (Test-Path -LiteralPath $VersionFile -PathType Leaf)) { throw "$VersionFile is missing" }
        $found = (Get-Content -LiteralPath $VersionFile -Raw).Trim()
        if ($found -ne $ExpectVersion) { throw "$VersionFile says '$found', the release expects '$ExpectVersion'" }
        Initialize-ImagingFolder -Path (Split-Path -Path $VhdPath -Parent)
        Initialize-ImagingFolder -Path $WorkRoot
        $Partial = "$VhdPath.partial"
        if (Test-Path -LiteralPath $Partial) {
            try { Dismount-VHD -Path $Partial } catch { Write-Verbose "not mounted: $Partial" }
            Remove-Item -LiteralPath $Partial -Force
        }
        $Mount = Join-Path $WorkRoot ('mnt-' + [guid]::NewGuid().ToString('N'))
        Initialize-ImagingFolder -Path $Mount
        # Sizes are written out in bytes (1 GiB = 1073741824): the parser the tests use lacks the 1GB suffix.
        New-VHD -Path $Partial -SizeBytes ($SizeGb * 1073741824) -Dynamic | Out-Null
        $vhd = Mount-VHD -Path $Partial -NoDriveLetter -PassThru
        $partition = $null
        try {
            Initialize-Disk -Number $vhd.DiskNumber -PartitionStyle GPT
            $partition = New-Partition -DiskNumber $vhd.DiskNumber -UseMaximumSize -GptType $BasicData
            $partition | Set-Partition -NoDefaultDriveLetter $true
            Format-Volume -Partition $partition -FileSystem NTFS -NewFileSystemLabel $Label -Confirm:$false | Out-Null
            Add-PartitionAccessPath -DiskNumber $vhd.DiskNumber -PartitionNumber $partition.PartitionNumber -AccessPath "$Mount\"
            # /E keeps empty folders; data, attributes and times; junctions are not followed; 8 and up is failure
            & robocopy.exe $SourcePath $Mount /E /COPY:DAT /DCOPY:DAT /XJ /R:2 /W:5 /NP /NFL /NDL /NJH /NJS | Out-Null
            if ($LASTEXITCODE -ge 8) { throw "robocopy from $SourcePath failed with exit code $LASTEXITCODE" }
            $files = New-Object System.Collections.ArrayList
            $dirs = New-Object System.Collections.ArrayList
            $prefix = $Mount.TrimEnd('\').Length + 1
            foreach ($item in Get-ChildItem -LiteralPath $Mount -Recurse -Force) {
                $rel = $item.FullName.Substring($prefix).Replace('\', '/')
                if ($rel -like 'System Volume Information*' -or $rel -like '$RECYCLE.BIN*') { continue }
                if ($item.PSIsContainer) { [void]$dirs.Add($rel); continue }
                [void]$files.Add([ordered]@{ path = $rel; size = $item.Length; sha256 = (Get-ImagingSha256 -Path $item.FullName) })
            }
            $Result['files'] = @($files | Sort-Object { $_['path'] })
            $Result['directories'] = @($dirs | Sort-Object)
            $Result['volume_size'] = $partition.Size
        }
        finally {
            if ($null -ne $partition) {
                Remove-PartitionAccessPath -DiskNumber $vhd.DiskNumber -PartitionNumber $partition.PartitionNumber -AccessPath "$Mount\" -ErrorAction SilentlyContinue
            }
            Dismount-VHD -Path $Partial
            Remove-Item -LiteralPath $Mount -Force -ErrorAction SilentlyContinue
        }
        Move-Item -LiteralPath $Partial -Destination $VhdPath
        Set-ItemProperty -LiteralPath $VhdPath -Name IsReadOnly -Value $true
        $Result['changed'] = $true
    }
    $Result['path'] = $VhdPath
    $Result['label'] = $Label
    $Result['disk_size'] = (Get-VHD -Path $VhdPath).Size
    $Result['size'] = (Get-Item -LiteralPath $VhdPath).Length
    $Result['sha256'] = Get-ImagingSha256 -Path $VhdPath
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
